//! Prints how generated documents split across verdicts, to keep the generator honest.
fn main() {
    let mut counts = std::collections::BTreeMap::new();
    let config = kmsguard_reference::Config::default();
    for seed in 0..20000u64 {
        let mut x = seed.wrapping_mul(0x9E3779B97F4A7C15) | 1;
        let choices: Vec<u8> = (0..300)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let doc = kmsguard_reference::gen::document(&choices);
        *counts.entry(format!("{:?}", kmsguard_reference::evaluate(&config, &doc))).or_insert(0) +=
            1;
        if seed < 200 && format!("{:?}", kmsguard_reference::evaluate(&config, &doc)) == "Invalid" {
            println!("{}", String::from_utf8_lossy(&doc));
        }
    }
    println!("{counts:#?}");
}
