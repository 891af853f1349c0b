//! The conformance suite (feature `testing`): every DESIGN.md rule, run through the [`Hub`] on a
//! backend of your choice.
