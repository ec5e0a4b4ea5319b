//! Pipelines over storage partitions (issue 4; not built yet).
