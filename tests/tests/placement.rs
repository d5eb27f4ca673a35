//! Placement on simulated multi-socket topologies: partitions are homed round-robin on the
//! nodes that have CPUs, never on CPU-less far nodes, and the engine works unchanged when
//! the simulated nodes do not exist on this machine (binding and pinning degrade to no-ops).

use tera_engine::{Config, Db, Topology};

fn open(topology: Topology, partitions: usize) -> (tempfile::TempDir, Db) {
    open_with_budget(topology, partitions, 16 << 20)
}

fn open_with_budget(topology: Topology, partitions: usize, budget: u64) -> (tempfile::TempDir, Db) {
    let dir = tempfile::tempdir().unwrap();
    let mut c = Config::new(dir.path());
    c.topology = Some(topology);
    c.partitions = partitions;
    c.dram_budget_bytes = budget;
    c.page_bytes = 64 << 10;
    c.segment_bytes = 256 << 10;
    c.max_value_bytes = 4096;
    c.max_key_bytes = 1024;
    let db = Db::open(c).unwrap();
    (dir, db)
}

#[test]
fn two_sockets_and_a_far_node_get_partitions_round_robin_on_the_sockets() {
    let topo = Topology::simulated(2, 4, 1, 64 << 30);
    assert_eq!(topo.cpu_nodes(), vec![0, 1]);
    assert_eq!(topo.far_nodes(), vec![2]);
    let (_dir, db) = open(topo, 8);
    assert_eq!(db.partition_nodes(), vec![0, 1, 0, 1, 0, 1, 0, 1]);
}

#[test]
fn four_sockets_with_an_uneven_partition_count() {
    let (_dir, db) = open(Topology::simulated(4, 2, 2, 1 << 30), 6);
    let nodes = db.partition_nodes();
    assert_eq!(nodes, vec![0, 1, 2, 3, 0, 1]);
    assert!(
        !nodes.contains(&4) && !nodes.contains(&5),
        "far nodes get no partitions"
    );
}

#[test]
fn default_partition_count_follows_the_cpus() {
    let (_dir, db) = open(Topology::simulated(2, 8, 0, 1 << 30), 0);
    assert_eq!(db.partition_nodes().len(), 32, "two partitions per CPU");
    let per_node = |n| db.partition_nodes().iter().filter(|&&x| x == n).count();
    assert_eq!((per_node(0), per_node(1)), (16, 16));
}

#[test]
fn keys_spread_over_partitions_on_both_sockets_and_read_back() {
    // 14 MB of data against a 4 MiB budget: most records live in the far tier.
    let (_dir, db) = open_with_budget(Topology::simulated(2, 2, 1, 1 << 30), 4, 4 << 20);
    let nodes = db.partition_nodes();
    let mut per_node = [0u32; 2];
    for k in 0..20_000u32 {
        let key = k.to_be_bytes();
        db.put(&key, &[k as u8; 700]).unwrap();
        per_node[nodes[db.partition_of(&key)] as usize] += 1;
    }
    assert!(
        per_node.iter().all(|&n| n > 9_000),
        "keys per node: {per_node:?}"
    );
    for k in (0..20_000u32).step_by(13) {
        assert_eq!(
            db.get(&k.to_be_bytes()).unwrap().unwrap(),
            vec![k as u8; 700]
        );
    }
    let s = db.stats();
    assert!(s.far.records > 0, "the budget forces tiering: {s:?}");
    assert!(s.dram_used_bytes <= s.dram_budget_bytes);
}

#[test]
fn the_detected_topology_places_every_partition_on_a_real_node() {
    let topo = Topology::detect();
    let real: Vec<u32> = topo.cpu_nodes();
    let (_dir, db) = open(topo, 0);
    assert!(db.partition_nodes().iter().all(|n| real.contains(n)));
}
