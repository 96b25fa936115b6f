//! An in-memory [`Backend`] that records what it was told, for tests of the runtime.

use std::collections::{BTreeMap, BTreeSet};

use agent_common::{addr::Addr, endpoint::Endpoint};

use crate::{
    backend::{Backend, BackendError, Counters, InterfaceRole, MapUsage, PodInterfaces},
    policy::{Delta, NodeState},
};

/// The node as the fake backend holds it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FakeBackend {
    pub state: NodeState,
    pub pods: PodInterfaces,
    pub service_ranges: Vec<(Addr, u8)>,
    pub enforcing: bool,
    pub attached: BTreeSet<(String, InterfaceRole)>,
    /// Number of `converge` calls.
    pub converged: usize,
    /// The next this many `converge` and `apply` calls fail without writing anything.
    pub failures: usize,
}

impl FakeBackend {
    fn injected_failure(&mut self) -> Result<(), BackendError> {
        if self.failures > 0 {
            self.failures -= 1;
            return Err(BackendError::Injected);
        }
        Ok(())
    }
}

impl Backend for FakeBackend {
    fn name(&self) -> &'static str {
        "fake"
    }

    fn converge(&mut self, state: &NodeState, pods: &PodInterfaces) -> Result<(), BackendError> {
        self.injected_failure()?;
        self.state = state.clone();
        self.pods = pods.clone();
        self.converged += 1;
        Ok(())
    }

    fn apply(&mut self, delta: &Delta, pods: &PodInterfaces) -> Result<(), BackendError> {
        self.injected_failure()?;
        self.state.apply(delta);
        self.pods = pods.clone();
        Ok(())
    }

    fn fail_closed(
        &mut self,
        endpoints: &BTreeMap<Addr, Endpoint>,
        _pods: &PodInterfaces,
    ) -> Result<(), BackendError> {
        self.state
            .endpoints
            .extend(crate::backend::not_programmed(endpoints));
        Ok(())
    }

    fn set_service_ranges(&mut self, ranges: &[(Addr, u8)]) -> Result<(), BackendError> {
        self.service_ranges = ranges.to_vec();
        Ok(())
    }

    fn set_enforcement(&mut self, enforce: bool) -> Result<(), BackendError> {
        self.enforcing = enforce;
        Ok(())
    }

    fn attach(&mut self, iface: &str, role: InterfaceRole) -> Result<(), BackendError> {
        self.attached.insert((iface.to_owned(), role));
        Ok(())
    }

    fn detach(&mut self, iface: &str, role: InterfaceRole) -> Result<(), BackendError> {
        self.attached.remove(&(iface.to_owned(), role));
        Ok(())
    }

    fn remove_orphans(&mut self) -> Result<usize, BackendError> {
        Ok(0)
    }

    fn counters(&self) -> Result<Counters, BackendError> {
        Ok(Counters::default())
    }

    fn usage(&self) -> Result<Vec<MapUsage>, BackendError> {
        Ok(Vec::new())
    }
}
