//! A cache simulator for issue 6's analysis: the hit ratio over time of a cache of
//! `--capacity` records under Zipf reads of `--keys` keys, for three policies:
//! - `lru`: least recently used (what Teraservices' CLOCK with readmission approximates);
//! - `wtinylfu`: W-TinyLFU (a 1% LRU window in front of a segmented LRU, 20% probation and 80%
//!   protected, admitting the window's victim only if a count-min sketch of 4-bit counters
//!   says it was read more often than the probation victim; the sketch is halved every
//!   `--sketch-window` × capacity reads): the frequency-aware policy of Caffeine;
//! - `infinite`: never evicts (so every miss is a key's first read: the bound for any cache
//!   that starts with the same keys, over the same stretch of requests).
//!
//! `--prefill N` starts the cache with N keys picked at random, in random order, as
//! Teraservices' DRAM tier starts a benchmark full of whatever the bulk load wrote last. Prints the hit ratio of each
//! `--every` requests, after a header with the best a cache of this capacity can do once
//! settled (the hottest N keys' share of the reads). A standalone program, outside the
//! workspace (no dependencies):
//!
//! ```sh
//! rustc -O -o /tmp/cachesim benches/scripts/cachesim.rs
//! /tmp/cachesim --keys 16000000 --zipf 0.99 --capacity 1450000 --requests 20000000 \
//!     --every 1000000 --policy lru --prefill 1450000
//! ```
//!
//! `benches/scripts/test_scripts.py` checks it against Che's approximation of LRU
//! (`cache_bounds.py`) and checks the other policies' ordering.

use std::process::exit;

/// xorshift64: the same stream for the same seed, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

const NIL: u32 = u32::MAX;

/// An intrusive doubly linked list over key ids (most recent at the head).
struct List {
    prev: Vec<u32>,
    next: Vec<u32>,
    head: u32,
    tail: u32,
    len: usize,
}

impl List {
    fn new(keys: usize) -> List {
        List {
            prev: vec![NIL; keys],
            next: vec![NIL; keys],
            head: NIL,
            tail: NIL,
            len: 0,
        }
    }

    fn push_front(&mut self, k: u32) {
        self.prev[k as usize] = NIL;
        self.next[k as usize] = self.head;
        if self.head == NIL {
            self.tail = k;
        } else {
            self.prev[self.head as usize] = k;
        }
        self.head = k;
        self.len += 1;
    }

    fn remove(&mut self, k: u32) {
        let (p, n) = (self.prev[k as usize], self.next[k as usize]);
        if p == NIL {
            self.head = n;
        } else {
            self.next[p as usize] = n;
        }
        if n == NIL {
            self.tail = p;
        } else {
            self.prev[n as usize] = p;
        }
        self.len -= 1;
    }

    fn pop_back(&mut self) -> u32 {
        let t = self.tail;
        self.remove(t);
        t
    }
}

/// A count-min sketch of 4-bit counters (one byte each here, saturating at 15), four rows,
/// halved after `window` additions (TinyLFU's reset).
struct Sketch {
    counters: Vec<u8>,
    mask: u64,
    added: u64,
    window: u64,
}

impl Sketch {
    fn new(counters: usize, window: u64) -> Sketch {
        let n = counters.next_power_of_two();
        Sketch {
            counters: vec![0; n],
            mask: n as u64 - 1,
            added: 0,
            window,
        }
    }

    fn slot(&self, k: u32, row: u64) -> usize {
        let mut x = u64::from(k).wrapping_add(row.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        x ^= x >> 33;
        x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
        x ^= x >> 33;
        (x & self.mask) as usize
    }

    fn estimate(&self, k: u32) -> u8 {
        (0..4).map(|r| self.counters[self.slot(k, r)]).min().unwrap_or(0)
    }

    /// Count a read of `k` (conservative update: only the smallest counters grow).
    fn add(&mut self, k: u32) {
        let m = self.estimate(k);
        if m < 15 {
            for r in 0..4 {
                let i = self.slot(k, r);
                if self.counters[i] == m {
                    self.counters[i] += 1;
                }
            }
        }
        self.added += 1;
        if self.added >= self.window {
            self.added /= 2;
            for c in &mut self.counters {
                *c >>= 1;
            }
        }
    }
}

/// Where a key is: not cached, in the LRU (or W-TinyLFU's window), in probation, protected.
const OUT: u8 = 0;
const LRU: u8 = 1;
const PROBATION: u8 = 2;
const PROTECTED: u8 = 3;

#[derive(Clone, Copy, PartialEq)]
enum Policy {
    Lru,
    WTinyLfu,
    Infinite,
}

struct Args {
    keys: usize,
    zipf: f64,
    capacity: usize,
    requests: u64,
    every: u64,
    policy: Policy,
    sketch_window: u64,
    prefill: usize,
    seed: u64,
}

fn usage(msg: &str) -> ! {
    eprintln!("cachesim: {msg}");
    eprintln!(
        "usage: cachesim --capacity N --requests N [--keys N] [--zipf S] [--every N] \
         [--policy lru|wtinylfu|infinite] [--sketch-window M] [--prefill N] [--seed N]"
    );
    exit(2);
}

fn parse() -> Args {
    let mut a = Args {
        keys: 16_000_000,
        zipf: 0.99,
        capacity: 0,
        requests: 0,
        every: 1_000_000,
        policy: Policy::Lru,
        sketch_window: 10,
        prefill: 0,
        seed: 0x1234_5678_9abc_def1,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut it = argv.chunks(2);
    for pair in &mut it {
        let [flag, value] = pair else {
            usage(&format!("{} needs a value", pair[0]));
        };
        let num = |what: &str| -> u64 {
            value
                .parse()
                .unwrap_or_else(|_| usage(&format!("{what} {value:?}: not a whole number")))
        };
        match flag.as_str() {
            "--keys" => a.keys = num("--keys") as usize,
            "--zipf" => {
                a.zipf = value
                    .parse()
                    .ok()
                    .filter(|s: &f64| s.is_finite() && *s >= 0.0)
                    .unwrap_or_else(|| usage(&format!("--zipf {value:?}: a number, 0 or more")))
            }
            "--capacity" => a.capacity = num("--capacity") as usize,
            "--requests" => a.requests = num("--requests"),
            "--every" => a.every = num("--every"),
            "--sketch-window" => a.sketch_window = num("--sketch-window"),
            "--prefill" => a.prefill = num("--prefill") as usize,
            "--seed" => a.seed = num("--seed"),
            "--policy" => {
                a.policy = match value.as_str() {
                    "lru" => Policy::Lru,
                    "wtinylfu" => Policy::WTinyLfu,
                    "infinite" => Policy::Infinite,
                    p => usage(&format!("--policy {p:?}: lru, wtinylfu or infinite")),
                }
            }
            f => usage(&format!("unknown flag {f}")),
        }
    }
    if a.keys < 2 || a.keys >= NIL as usize {
        usage("--keys: 2 to 2^32 - 2");
    }
    if a.capacity == 0 || a.capacity > a.keys || a.requests == 0 || a.every == 0 {
        usage("--capacity (1 to --keys), --requests and --every must be positive");
    }
    if a.seed == 0 {
        usage("--seed: not 0");
    }
    if a.policy == Policy::WTinyLfu && a.capacity < 2 {
        usage("--capacity: at least 2 for wtinylfu (a window and a main part)");
    }
    a
}

fn main() {
    let a = parse();
    // Key i (0-based) is the (i+1)-th most popular: P(i) ∝ (i+1)^-s.
    let mut cdf = Vec::with_capacity(a.keys);
    let mut total = 0.0f64;
    for i in 1..=a.keys {
        total += (i as f64).powf(-a.zipf);
        cdf.push(total);
    }
    let best = cdf[a.capacity - 1] / total;
    let capacity = if a.policy == Policy::Infinite {
        a.keys
    } else {
        a.capacity
    };
    let window_cap = match a.policy {
        Policy::WTinyLfu => (capacity / 100).max(1),
        _ => capacity,
    };
    let main_cap = capacity - window_cap.min(capacity - 1);
    let protected_cap = main_cap * 8 / 10;
    let mut sketch = Sketch::new(
        if a.policy == Policy::WTinyLfu {
            capacity * 4
        } else {
            1
        },
        a.sketch_window.max(1) * capacity as u64,
    );
    let mut at = vec![OUT; a.keys];
    let mut lru = List::new(a.keys);
    let mut probation = List::new(if a.policy == Policy::WTinyLfu { a.keys } else { 0 });
    let mut protected = List::new(if a.policy == Policy::WTinyLfu { a.keys } else { 0 });

    // Prefill with about `prefill` keys, each key in with the same chance.
    let room = if a.policy == Policy::WTinyLfu {
        main_cap
    } else {
        capacity
    };
    let want = a.prefill.min(room);
    // A stream of its own (never seeded 0: xorshift would stay at 0).
    let mut pick = Rng(a.seed.rotate_left(32).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let mut chosen = Vec::with_capacity(want);
    for k in 0..a.keys {
        if chosen.len() == want {
            break;
        }
        // Pick each remaining key with probability (still wanted) / (still left).
        if pick.unit() * ((a.keys - k) as f64) < (want - chosen.len()) as f64 {
            chosen.push(k as u32);
        }
    }
    // In random order: key ids are popularity ranks, so inserting them in id order would make
    // the hottest prefilled key the first one evicted.
    for i in (1..chosen.len()).rev() {
        chosen.swap(i, (pick.next() % (i as u64 + 1)) as usize);
    }
    let filled = chosen.len();
    for k in chosen {
        if a.policy == Policy::WTinyLfu {
            probation.push_front(k);
            at[k as usize] = PROBATION;
        } else {
            lru.push_front(k);
            at[k as usize] = LRU;
        }
    }
    println!(
        "# keys {} zipf {} capacity {} policy {} prefill {filled}: best once settled (the hottest {} keys' share) {best:.4}",
        a.keys,
        a.zipf,
        a.capacity,
        match a.policy {
            Policy::Lru => "lru",
            Policy::WTinyLfu => "wtinylfu",
            Policy::Infinite => "infinite",
        },
        a.capacity
    );
    println!("# requests hit_ratio (of the requests since the line before)");

    let mut rng = Rng(a.seed);
    let (mut hits, mut reqs) = (0u64, 0u64);
    for r in 1..=a.requests {
        let u = rng.unit() * total;
        let k = cdf.partition_point(|&c| c < u).min(a.keys - 1) as u32;
        reqs += 1;
        match a.policy {
            Policy::Lru | Policy::Infinite => {
                if at[k as usize] == LRU {
                    hits += 1;
                    lru.remove(k);
                } else {
                    if lru.len >= capacity {
                        let v = lru.pop_back();
                        at[v as usize] = OUT;
                    }
                    at[k as usize] = LRU;
                }
                lru.push_front(k);
            }
            Policy::WTinyLfu => {
                sketch.add(k);
                match at[k as usize] {
                    LRU => {
                        hits += 1;
                        lru.remove(k);
                        lru.push_front(k);
                    }
                    PROBATION => {
                        hits += 1;
                        probation.remove(k);
                        protected.push_front(k);
                        at[k as usize] = PROTECTED;
                        if protected.len > protected_cap {
                            let d = protected.pop_back();
                            probation.push_front(d);
                            at[d as usize] = PROBATION;
                        }
                    }
                    PROTECTED => {
                        hits += 1;
                        protected.remove(k);
                        protected.push_front(k);
                    }
                    _ => {
                        lru.push_front(k);
                        at[k as usize] = LRU;
                        if lru.len > window_cap {
                            let candidate = lru.pop_back();
                            if probation.len + protected.len < main_cap {
                                probation.push_front(candidate);
                                at[candidate as usize] = PROBATION;
                            } else {
                                let victim = if probation.len > 0 {
                                    probation.tail
                                } else {
                                    protected.tail
                                };
                                if sketch.estimate(candidate) > sketch.estimate(victim) {
                                    if at[victim as usize] == PROBATION {
                                        probation.remove(victim);
                                    } else {
                                        protected.remove(victim);
                                    }
                                    at[victim as usize] = OUT;
                                    probation.push_front(candidate);
                                    at[candidate as usize] = PROBATION;
                                } else {
                                    at[candidate as usize] = OUT;
                                }
                            }
                        }
                    }
                }
            }
        }
        if r % a.every == 0 {
            println!("{r} {:.4}", hits as f64 / reqs as f64);
            hits = 0;
            reqs = 0;
        }
    }
}
