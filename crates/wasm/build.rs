//! Fluent Bit copies each record into the module with the module's own `malloc` when the module
//! exports `malloc` and `free` (WAMR's `wasm_runtime_module_dup_data`); otherwise it uses a fixed
//! app heap (8 KiB unless `Wasm_Heap_Size` says more), and a larger record arrives as a null
//! pointer. Exporting wasi-libc's allocator makes any record size work with no setting.
fn main() {
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("wasi") {
        println!("cargo:rustc-link-arg=--export=malloc");
        println!("cargo:rustc-link-arg=--export=free");
    }
}
