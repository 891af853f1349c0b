//! occupancy-axum: placeholder, filled in by its issue.
