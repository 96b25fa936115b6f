//! `netpol-agent`: the per-node daemon.

fn main() -> anyhow::Result<()> {
    anyhow::bail!("netpol-agent: the runtime is not built yet (see the open issues)")
}
