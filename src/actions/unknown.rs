//! An action imd does not know: refused with 404, naming it.

use super::Refusal;

pub struct Unknown<'f> {
    action: &'f str,
}

impl<'f> Unknown<'f> {
    pub fn new(action: &'f str) -> Unknown<'f> {
        Unknown { action }
    }

    pub fn apply(self) -> Refusal {
        Refusal::new(404, format!("unknown action: {}", self.action))
    }
}
