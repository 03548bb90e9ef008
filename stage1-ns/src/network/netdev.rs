//! A network namespace's interface counters, from its `/proc/net/dev`
//! (read through a process in it: `/proc/<pid>/net/dev`).

use std::path::Path;

/// One interface's counters from `/proc/net/dev`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetDev {
    pub name: String,
    pub rx_bytes: u64,
    pub rx_packets: u64,
    pub rx_errors: u64,
    pub rx_dropped: u64,
    pub tx_bytes: u64,
    pub tx_packets: u64,
    pub tx_errors: u64,
    pub tx_dropped: u64,
}

/// `/proc/net/dev`: two header lines, then `name: 8 receive and 8
/// transmit counters`.
pub fn parse_net_dev(text: &str) -> Vec<NetDev> {
    text.lines()
        .skip(2)
        .filter_map(|line| {
            let (name, rest) = line.split_once(':')?;
            let n: Vec<u64> = rest.split_whitespace().map(|w| w.parse().ok()).collect::<Option<_>>()?;
            let at = |i: usize| n.get(i).copied();
            Some(NetDev {
                name: name.trim().to_owned(),
                rx_bytes: at(0)?,
                rx_packets: at(1)?,
                rx_errors: at(2)?,
                rx_dropped: at(3)?,
                tx_bytes: at(8)?,
                tx_packets: at(9)?,
                tx_errors: at(10)?,
                tx_dropped: at(11)?,
            })
        })
        .collect()
}

/// The pod's interfaces without loopback, as cAdvisor counts them; a pod
/// with no network but its loopback (`network: none`) reports that.
pub fn pod_interfaces(devs: Vec<NetDev>) -> Vec<NetDev> {
    if devs.iter().all(|d| d.name == "lo") {
        return devs;
    }
    devs.into_iter().filter(|d| d.name != "lo").collect()
}

/// The interfaces of the network namespace of process `pid` but loopback
/// (see [`pod_interfaces`]); none when it is gone.
pub fn of_process(pid: i32) -> Vec<NetDev> {
    let path = Path::new("/proc").join(pid.to_string()).join("net").join("dev");
    std::fs::read_to_string(path).map(|t| pod_interfaces(parse_net_dev(&t))).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const NET_DEV: &str = "\
Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:     840      10    0    0    0     0          0         0      840      10    0    0    0     0       0          0
  eth0: 1296102    1016    1    2    0     0          0         0   93610     812    3    4    0     0       0          0
";

    #[test]
    fn counters_without_loopback() {
        let devs = pod_interfaces(parse_net_dev(NET_DEV));
        assert_eq!(devs.len(), 1, "{devs:?}");
        let eth0 = &devs[0];
        assert_eq!((eth0.name.as_str(), eth0.rx_bytes, eth0.rx_packets), ("eth0", 1_296_102, 1016));
        assert_eq!((eth0.rx_errors, eth0.rx_dropped), (1, 2));
        assert_eq!((eth0.tx_bytes, eth0.tx_packets, eth0.tx_errors, eth0.tx_dropped), (93_610, 812, 3, 4));
        let lo_only = pod_interfaces(parse_net_dev("h\nh\n  lo: 1 2 0 0 0 0 0 0 3 4 0 0 0 0 0 0\n"));
        assert_eq!(lo_only.len(), 1, "loopback when it is all there is");
        assert!(parse_net_dev("h\nh\n  eth0: 1 2 x\n").is_empty(), "a garbled line is skipped");
    }
}
