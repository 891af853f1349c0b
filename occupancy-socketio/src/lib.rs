//! occupancy-socketio: placeholder, filled in by its issue.
