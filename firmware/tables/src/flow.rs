//! The flow table that makes security groups stateful: return traffic of an allowed flow passes.
