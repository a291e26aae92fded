//! The status bar's messages: the latest few, errors also logged.

/// A message in the status bar.
#[derive(Debug, Clone)]
pub struct Notice {
    pub text: String,
    pub is_error: bool,
}

/// The latest messages, oldest first (at most [`Notices::KEPT`]).
#[derive(Debug, Default)]
pub struct Notices {
    list: Vec<Notice>,
}

impl Notices {
    const KEPT: usize = 20;

    pub fn push(&mut self, text: String, is_error: bool) {
        if is_error {
            tracing::warn!("{text}");
        }
        self.list.push(Notice { text, is_error });
        if self.list.len() > Self::KEPT {
            self.list.remove(0);
        }
    }

    pub fn clear(&mut self) {
        self.list.clear();
    }

    pub fn last(&self) -> Option<&Notice> {
        self.list.last()
    }

    pub fn iter(&self) -> impl DoubleEndedIterator<Item = &Notice> {
        self.list.iter()
    }
}
