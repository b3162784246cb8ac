//! The in-cluster controller (issue 4). Not yet built.
