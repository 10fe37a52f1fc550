//! What the command line names as input: standard input, files, and directories walked as ripgrep
//! walks them; and how each is read: memory-mapped, streamed, or decompressed (gzip, zstd),
//! recognised by its first bytes whatever its name.

use std::cell::Cell;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::PathBuf;
use std::rc::Rc;

/// One input of a run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    /// Standard input (`-`, or no path at all).
    Stdin,
    /// A file named on the command line or found in a directory.
    Path(PathBuf),
}

impl Input {
    /// The name used in messages and in `--count` output (`-` for standard input).
    pub fn name(&self) -> String {
        match self {
            Input::Stdin => "-".to_string(),
            Input::Path(p) => p.display().to_string(),
        }
    }
}

/// How directories are walked.
#[derive(Clone, Copy, Debug, Default)]
pub struct Walk {
    /// Also descend into hidden directories and read hidden files (names starting with `.`).
    pub hidden: bool,
    /// Follow symbolic links met inside directories.
    pub follow: bool,
}

/// Expands the command line's paths into inputs, in order: a directory becomes the files below
/// it, sorted by path, so that output order never depends on the file system. As in ripgrep,
/// hidden entries and symbolic links inside a directory are skipped unless asked for; a path
/// named on the command line is always read. Walking errors (a directory that cannot be read, a
/// link loop) go to `error` and the walk goes on.
pub fn expand(paths: &[PathBuf], walk: Walk, error: &mut dyn FnMut(String)) -> Vec<Input> {
    if paths.is_empty() {
        return vec![Input::Stdin];
    }
    let mut inputs = Vec::new();
    for path in paths {
        if path.as_os_str() == "-" {
            inputs.push(Input::Stdin);
        } else if path.is_dir() {
            let entries = walkdir::WalkDir::new(path)
                .follow_links(walk.follow)
                .sort_by_file_name()
                .into_iter()
                .filter_entry(|e| walk.hidden || e.depth() == 0 || !is_hidden(e.file_name()));
            for entry in entries {
                match entry {
                    Ok(e) if e.file_type().is_file() => inputs.push(Input::Path(e.into_path())),
                    Ok(_) => {}
                    Err(e) => error(e.to_string()),
                }
            }
        } else {
            inputs.push(Input::Path(path.clone()));
        }
    }
    inputs
}

fn is_hidden(name: &std::ffi::OsStr) -> bool {
    name.as_encoded_bytes().starts_with(b".")
}

/// What the first bytes of an input say it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Text: NDJSON, or anything else that is read as lines.
    Plain,
    /// gzip (RFC 1952), one member or several.
    Gzip,
    /// Zstandard, one frame or several.
    Zstd,
    /// Compressed or binary in a way kmsguard does not decode; read as lines, and warned about.
    Undecoded(&'static str),
}

/// The longest magic number [`sniff`] looks at.
pub const MAGIC_LEN: usize = 6;

/// Recognises an input by its first bytes (at least [`MAGIC_LEN`] when it has them).
pub fn sniff(head: &[u8]) -> Format {
    const UNDECODED: &[(&[u8], &str)] = &[
        (b"BZh", "bzip2"),
        (b"\xFD7zXZ\x00", "xz"),
        (b"PK\x03\x04", "zip"),
        (b"7z\xBC\xAF\x27\x1C", "7z"),
        (b"\x04\x22\x4D\x18", "lz4"),
        (b"\x89PNG", "PNG"),
        (b"%PDF", "PDF"),
    ];
    if head.starts_with(b"\x1F\x8B") {
        return Format::Gzip;
    }
    if head.starts_with(b"\x28\xB5\x2F\xFD") {
        return Format::Zstd;
    }
    if let Some((_, name)) = UNDECODED.iter().find(|(magic, _)| head.starts_with(magic)) {
        return Format::Undecoded(name);
    }
    Format::Plain
}

/// Whether a plain input's first block looks binary: NDJSON never holds a NUL byte.
pub fn looks_binary(head: &[u8]) -> bool {
    memchr::memchr(0, &head[..head.len().min(8192)]).is_some()
}

/// Opens a regular file, or standard input, for streaming, with its first bytes read ahead so
/// that it can be recognised before a byte is consumed.
pub struct Peeked<R> {
    head: io::Cursor<Vec<u8>>,
    rest: R,
}

impl<R: Read> Peeked<R> {
    /// Reads up to 8 KiB of `rest` ahead (fewer when it ends first).
    pub fn new(mut rest: R) -> io::Result<Peeked<R>> {
        let mut head = vec![0; 8192];
        let mut filled = 0;
        while filled < MAGIC_LEN {
            match rest.read(&mut head[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        head.truncate(filled);
        Ok(Peeked { head: io::Cursor::new(head), rest })
    }

    /// The bytes read ahead.
    pub fn head(&self) -> &[u8] {
        self.head.get_ref()
    }
}

impl<R: Read> Read for Peeked<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if (self.head.position() as usize) < self.head.get_ref().len() {
            return self.head.read(buf);
        }
        self.rest.read(buf)
    }
}

/// Counts the compressed bytes a decoder has consumed, so that an error can say where.
struct Counted<R> {
    inner: R,
    consumed: Rc<Cell<u64>>,
}

impl<R: BufRead> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.consumed.set(self.consumed.get() + n as u64);
        Ok(n)
    }
}

impl<R: BufRead> BufRead for Counted<R> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        self.inner.fill_buf()
    }

    fn consume(&mut self, amt: usize) {
        self.consumed.set(self.consumed.get() + amt as u64);
        self.inner.consume(amt);
    }
}

/// A decompressing reader whose errors name the format and the compressed offset where decoding
/// failed (a corrupt or truncated archive).
pub struct Decoded<'a> {
    inner: Box<dyn Read + 'a>,
    format: &'static str,
    consumed: Rc<Cell<u64>>,
}

impl Read for Decoded<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf).map_err(|e| {
            let at = self.consumed.get();
            io::Error::new(
                e.kind(),
                format!("corrupt or truncated {} data at compressed byte {at}: {e}", self.format),
            )
        })
    }
}

/// How much compressed input is read at a time.
const COMPRESSED_BUFFER: usize = 256 * 1024;

/// `input` as text: wrapped in the decoder its format needs, or as it is. `size`, when known
/// (a regular file), bounds the decoder's read buffer: `BufReader` zero-fills its buffer once,
/// which for a directory of small `.json.gz` files would cost more than reading them.
pub fn reader<'a>(
    format: Format,
    input: impl Read + 'a,
    size: Option<u64>,
) -> io::Result<Box<dyn Read + 'a>> {
    if let Format::Plain | Format::Undecoded(_) = format {
        return Ok(Box::new(input));
    }
    let capacity = size.map_or(COMPRESSED_BUFFER, |n| {
        usize::try_from(n).unwrap_or(usize::MAX).clamp(4096, COMPRESSED_BUFFER)
    });
    let consumed = Rc::new(Cell::new(0));
    let counted = Counted {
        inner: BufReader::with_capacity(capacity, input),
        consumed: Rc::clone(&consumed),
    };
    let (inner, format): (Box<dyn Read + 'a>, _) = match format {
        Format::Gzip => (Box::new(flate2::bufread::MultiGzDecoder::new(counted)), "gzip"),
        Format::Zstd => (Box::new(zstd::stream::read::Decoder::with_buffer(counted)?), "zstd"),
        Format::Plain | Format::Undecoded(_) => unreachable!("read as it is, above"),
    };
    Ok(Box::new(Decoded { inner, format, consumed }))
}

/// Reads the first bytes of a regular file without moving its offset, to recognise it.
pub fn head_of(file: &File) -> io::Result<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    let mut head = vec![0; MAGIC_LEN];
    let mut filled = 0;
    while filled < MAGIC_LEN {
        match file.read_at(&mut head[filled..], filled as u64) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    head.truncate(filled);
    Ok(head)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn decode_all(bytes: Vec<u8>) -> io::Result<Vec<u8>> {
        let format = sniff(&bytes);
        let mut out = Vec::new();
        reader(format, io::Cursor::new(bytes), None)?.read_to_end(&mut out)?;
        Ok(out)
    }

    #[test]
    fn formats_are_recognised_by_their_magic() {
        assert_eq!(sniff(&gzip(b"x")), Format::Gzip);
        assert_eq!(sniff(&zstd::encode_all(&b"x"[..], 1).unwrap()), Format::Zstd);
        assert_eq!(sniff(b"BZh91AY"), Format::Undecoded("bzip2"));
        assert_eq!(sniff(b"{\"a\":1}"), Format::Plain);
        assert_eq!(sniff(b""), Format::Plain);
        assert!(looks_binary(b"{}\n\0"));
        assert!(!looks_binary(b"{}\n"));
    }

    #[test]
    fn concatenated_members_and_frames_decode_as_one_stream() {
        let two = [gzip(b"a\n"), gzip(b"b\n")].concat();
        assert_eq!(decode_all(two).unwrap(), b"a\nb\n");
        let frames =
            [zstd::encode_all(&b"a\n"[..], 3).unwrap(), zstd::encode_all(&b"b\n"[..], 3).unwrap()]
                .concat();
        assert_eq!(decode_all(frames).unwrap(), b"a\nb\n");
    }

    #[test]
    fn truncated_and_corrupt_archives_say_where() {
        let whole = gzip(&b"{\"eventName\":\"DisableKey\"}\n".repeat(1000));
        let truncated = whole[..whole.len() / 2].to_vec();
        let err = decode_all(truncated).unwrap_err().to_string();
        assert!(err.starts_with("corrupt or truncated gzip data at compressed byte"), "{err}");
        let mut corrupt = whole.clone();
        corrupt[20..40].fill(0xAA);
        let err = decode_all(corrupt).unwrap_err().to_string();
        assert!(err.contains("gzip data at compressed byte"), "{err}");
    }

    #[test]
    fn peeking_loses_nothing() {
        let mut p = Peeked::new(io::Cursor::new(b"0123456789".to_vec())).unwrap();
        assert_eq!(p.head(), b"0123456789");
        let mut all = Vec::new();
        p.read_to_end(&mut all).unwrap();
        assert_eq!(all, b"0123456789");
    }

    #[test]
    fn directories_are_walked_in_path_order_without_hidden_entries() {
        let dir = std::env::temp_dir().join(format!("kmsguard-walk-{}", std::process::id()));
        for f in ["b/2.json", "b/1.json", "a.json", ".hidden/x.json", "b/.y.json"] {
            let path = dir.join(f);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, b"{}").unwrap();
        }
        let names = |walk| {
            let mut errors = Vec::new();
            let inputs = expand(std::slice::from_ref(&dir), walk, &mut |e| errors.push(e));
            assert!(errors.is_empty(), "{errors:?}");
            inputs
                .iter()
                .map(|i| i.name()[dir.display().to_string().len() + 1..].to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(names(Walk::default()), ["a.json", "b/1.json", "b/2.json"]);
        let all = names(Walk { hidden: true, follow: false });
        assert_eq!(all, [".hidden/x.json", "a.json", "b/.y.json", "b/1.json", "b/2.json"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
