//! Model code: see issue work in progress.
