//! occupancy-redis: placeholder, filled in by its issue.
