//! Tuning harness: the model's ideal code length (and a real encode/decode round trip
//! with timings) on files of uint16 token ids, against the xz sizes given in env vars.
//!
//! cargo run --release -p seqkv-ppm --example ppm_costs -- FILE.u16 ...
//! Env: K (order), D1_i/D2_i/D3_i/TH_i (tuning entries), ZC, WIN, BON, AW, AL, STATS=1, CODE=1.
use seqkv_ppm::channel::CostChannel;
use seqkv_ppm::{Model, Tuning};

fn env(name: &str, d: u32) -> u32 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(d)
}

fn arr(name: &str, a: &mut [u32]) {
    for (i, x) in a.iter_mut().enumerate() {
        if let Ok(v) = std::env::var(format!("{name}_{i}")) {
            *x = v.parse().unwrap();
        }
    }
}

fn main() {
    let mut t = Tuning::profile1();
    let order = env("K", 4) as usize;
    arr("D1", &mut t.d1);
    arr("D2", &mut t.d2);
    arr("D3", &mut t.d3);
    arr("TH", &mut t.theta);
    t.zipf_c = env("ZC", t.zipf_c);
    t.window = env("WIN", t.window);
    t.bonus = env("BON", t.bonus);
    t.apm_w = env("AW", t.apm_w);
    t.apm_limit = env("AL", t.apm_limit as u32) as u16;
    t.match_min = env("MM", t.match_min);
    t.node_limit = env("NL", t.node_limit);
    let (mut tot, mut totx) = (0.0, 0.0);
    for path in std::env::args().skip(1) {
        let bytes = std::fs::read(&path).unwrap();
        let toks: Vec<u32> = bytes.chunks(2).map(|c| u16::from_le_bytes([c[0], c[1]]) as u32).collect();
        let m = Model::new(49152, order, t.clone()).unwrap();
        let mut mm = m.clone();
        let mut ch = CostChannel::default();
        let mut marks = Vec::new();
        for (i, &s) in toks.iter().enumerate() {
            ch.sym = s;
            mm.step(&mut ch).unwrap();
            if [500, 1000, 2000, 4000].contains(&(i + 1)) {
                marks.push((i + 1, ch.bits as u64));
            }
        }
        if std::env::var("PREFIX").is_ok() {
            println!("{marks:?}");
        }
        let bpt = ch.bits / toks.len() as f64;
        let name = std::path::Path::new(&path).file_stem().unwrap().to_string_lossy().to_string();
        let xz: f64 = std::env::var(format!("XZ_{}", name.replace(['-', '.'], "_"))).ok().and_then(|v| v.parse().ok()).unwrap_or(f64::NAN);
        let mut extra = String::new();
        if std::env::var("CODE").is_ok() {
            let t0 = std::time::Instant::now();
            let payloads = seqkv_ppm::encode(&m, &toks, 1 << 16).unwrap();
            let te = t0.elapsed().as_secs_f64();
            let blocks: Vec<(&[u8], usize)> = payloads.iter().zip(toks.chunks(1 << 16)).map(|(p, c)| (p.as_slice(), c.len())).collect();
            let t1 = std::time::Instant::now();
            let back = seqkv_ppm::decode(&m, &blocks).unwrap();
            let td = t1.elapsed().as_secs_f64();
            assert_eq!(back, toks);
            let real: usize = payloads.iter().map(|p| p.len()).sum();
            extra = format!("  real {:.3} b/t  enc {:.0} tok/s dec {:.0} tok/s", real as f64 * 8.0 / toks.len() as f64, toks.len() as f64 / te, toks.len() as f64 / td);
        }
        println!("{:>12} {:6} tok {:7.3} b/t  xz {:6.3} ratio {:.3}{}", name, toks.len(), bpt, xz, bpt / xz, extra);
        if std::env::var("STATS").is_ok() {
            for (k, e) in ch.stats.iter().enumerate() {
                println!("    tag {k}: sym {:6} x {:7.3} = {:8.0} | esc {:6} x {:6.3} = {:8.0}  ({:.3} b/t)", e.1, e.0 / e.1.max(1) as f64, e.0, e.3, e.2 / e.3.max(1) as f64, e.2, (e.0 + e.2) / toks.len() as f64);
            }
        }
        tot += ch.bits;
        totx += xz * toks.len() as f64;
    }
    println!("TOTAL ratio {:.4}", tot / totx);
}
