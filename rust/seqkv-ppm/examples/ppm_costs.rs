//! Tuning harness: ideal code length of the model on token files (uint16 ids).
//! Usage: cargo run --release -p seqkv-ppm --example ppm_costs -- FILE.u16 ...
use seqkv_ppm::channel::CostChannel;
use seqkv_ppm::{Model, Tuning};

fn env(name: &str, d: u32) -> u32 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(d)
}

fn arr(name: &str, a: &mut [u32]) {
    if let Ok(v) = std::env::var(name) {
        let vals: Vec<u32> = v.split(',').map(|x| x.parse().unwrap()).collect();
        for (i, x) in a.iter_mut().enumerate() {
            *x = vals[i.min(vals.len() - 1)];
        }
    }
    for (i, x) in a.iter_mut().enumerate() {
        if let Ok(v) = std::env::var(format!("{name}_{i}")) {
            *x = v.parse().unwrap();
        }
    }
}

fn main() {
    let mut t = Tuning::default();
    t.max_order = env("K", t.max_order as u32) as usize;
    t.update = env("UP", t.update);
    t.zipf_c = env("ZC", t.zipf_c);
    arr("D1", &mut t.d1);
    arr("D2", &mut t.d2);
    arr("D3", &mut t.d3);
    arr("TH", &mut t.theta);
    t.rb = env("RB", t.rb);
    t.see = env("SEE", t.see);
    t.ctx_mode = env("CM", 0);
    if let Ok(p) = std::env::var("WS") {
        t.transparent = std::fs::read_to_string(p).unwrap().split_whitespace().map(|x| x.parse().unwrap()).collect();
    }
    t.apm_w = env("AW", 0);
    t.lb = env("LB", 0);
    t.raw_w = env("RW", 0);
    t.rw2 = env("RW2", 0);
    t.apm_limit = env("AL", 255);
    if let Ok(v) = std::env::var("AUX") {
        t.aux_masks = v.split(',').map(|x| x.parse().unwrap()).collect();
    }
    if let Ok(v) = std::env::var("BETA") {
        t.aux_beta = v.split(',').map(|x| x.parse().unwrap()).collect();
    }
    if let Ok(v) = std::env::var("MASKS") {
        t.masks = v.split(',').map(|x| x.parse().unwrap()).collect();
    }
    t.see_lo = env("SEELO", t.see_lo);
    t.hl = env("HL", t.hl);
    let mut tot = 0.0;
    let mut totx = 0.0;
    for path in std::env::args().skip(1) {
        let bytes = std::fs::read(&path).unwrap();
        let toks: Vec<u32> = bytes.chunks(2).map(|c| u16::from_le_bytes([c[0], c[1]]) as u32).collect();
        let mut m = Model::new(49152, t.clone());
        let mut ch = CostChannel::default();
        let t0 = std::time::Instant::now();
        let mut trace = String::new();
        for &s in &toks {
            ch.sym = s;
            let b0 = ch.bits;
            m.step(&mut ch).unwrap();
            if std::env::var("TRACE").is_ok() {
                trace += &format!("{} {} {:.3}\n", s, ch.tag, ch.bits - b0);
            }
        }
        if std::env::var("TRACE").is_ok() {
            std::fs::write(format!("{path}.trace"), trace).unwrap();
        }
        let el = t0.elapsed().as_secs_f64();
        let bpt = ch.bits / toks.len() as f64;
        let name = std::path::Path::new(&path).file_stem().unwrap().to_string_lossy().to_string();
        let xz: f64 = std::env::var(format!("XZ_{}", name.replace(['-', '.'], "_"))).ok().and_then(|v| v.parse().ok()).unwrap_or(f64::NAN);
        println!("{:>12} {:6} tok {:7.3} b/t  xz {:6.3} ratio {:.3}  {:.0} tok/s", name, toks.len(), bpt, xz, bpt / xz, toks.len() as f64 / el);
        if std::env::var("STATS").is_ok() {
            for (k, e) in ch.stats.iter().enumerate() {
                println!("    tag {k}: sym {:6} x {:7.3} = {:8.0} | esc {:6} x {:6.3} = {:8.0}  ({:.3} b/t)", e.1, e.0 / e.1.max(1) as f64, e.0, e.3, e.2 / e.3.max(1) as f64, e.2, (e.0 + e.2) / toks.len() as f64);
            }
        }
        if std::env::var("CALIB").is_ok() {
            let mut b = vec![(0.0f64, 0u32, 0u32); 10];
            for &(p, hit) in &ch.calib {
                let i = ((p * 10.0) as usize).min(9);
                b[i].0 += p;
                b[i].1 += 1;
                b[i].2 += hit as u32;
            }
            for (i, e) in b.iter().enumerate() {
                if e.1 > 0 {
                    println!("    p~{:.2}: n {:5} mean p {:.3} hit {:.3}", i as f64 / 10.0, e.1, e.0 / e.1 as f64, e.2 as f64 / e.1 as f64);
                }
            }
        }
        tot += ch.bits;
        totx += xz * toks.len() as f64;
    }
    println!("TOTAL ratio {:.4}", tot / totx);
    if std::env::var("DET").is_ok() {
        let d = seqkv_ppm::model::DETSTATS.lock().unwrap();
        for (i, e) in d.iter().enumerate() {
            if e.0 > 0 {
                println!("order {} distinct {} total {}: n {:6} top-hit {:.3} any-hit {:.3}", i / 16, (i % 16) / 4, i % 4 + 1, e.0, e.1 as f64 / e.0 as f64, e.2 as f64 / e.0 as f64);
            }
        }
    }
}
