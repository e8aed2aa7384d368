//! Dynamic batch planner (see lead).
