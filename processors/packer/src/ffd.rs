//! Online first-fit-decreasing. Sequences arrive one by one; the packer keeps a bounded window
//! of them, and when the window is full (by count or by tokens) it sorts the window by length,
//! largest first, and places each sequence in the first open row with room, opening a row
//! when none has. A row is sealed when it is full enough, or when too many rows are open (the
//! fullest goes first). Memory stays bounded by the window and the open rows however long the
//! stream runs; `finish` flushes everything.

/// A sequence to place: its token count and whatever the caller needs back.
#[derive(Debug, Clone, PartialEq)]
pub struct Sequence<T> {
    pub tokens: usize,
    pub item: T,
}

/// A packed row: sequences whose token counts add up to at most the row capacity.
#[derive(Debug, Clone, PartialEq)]
pub struct Row<T> {
    pub tokens: usize,
    pub sequences: Vec<Sequence<T>>,
}

#[derive(Debug, Clone)]
pub struct PackingSettings {
    /// Tokens per row (the paper: 60,000).
    pub row_capacity: usize,
    /// Sequences held back before placing (more = closer to offline FFD, more memory).
    pub window_sequences: usize,
    /// Tokens held back before placing.
    pub window_tokens: usize,
    /// A row at least this full is sealed at once.
    pub seal_fill: f64,
    /// Rows open at once; beyond this the fullest is sealed.
    pub max_open_rows: usize,
}

impl PackingSettings {
    pub fn new(row_capacity: usize) -> PackingSettings {
        PackingSettings {
            row_capacity,
            window_sequences: 2048,
            window_tokens: 64 * row_capacity,
            seal_fill: 0.995,
            max_open_rows: 64,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TooLong {
    pub tokens: usize,
    pub capacity: usize,
}

impl std::fmt::Display for TooLong {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "sequence of {} tokens is longer than a row ({} tokens)", self.tokens, self.capacity)
    }
}

pub struct OnlinePacker<T> {
    settings: PackingSettings,
    window: Vec<Sequence<T>>,
    window_tokens: usize,
    open: Vec<Row<T>>,
}

impl<T> OnlinePacker<T> {
    pub fn new(settings: PackingSettings) -> OnlinePacker<T> {
        OnlinePacker { settings, window: Vec::new(), window_tokens: 0, open: Vec::new() }
    }

    /// Adds a sequence; returns the rows this sealed (often none).
    pub fn push(&mut self, sequence: Sequence<T>) -> Result<Vec<Row<T>>, TooLong> {
        if sequence.tokens > self.settings.row_capacity || sequence.tokens == 0 {
            return Err(TooLong { tokens: sequence.tokens, capacity: self.settings.row_capacity });
        }
        self.window_tokens += sequence.tokens;
        self.window.push(sequence);
        if self.window.len() >= self.settings.window_sequences || self.window_tokens >= self.settings.window_tokens {
            return Ok(self.place_window());
        }
        Ok(Vec::new())
    }

    /// Places everything and seals every row.
    pub fn finish(&mut self) -> Vec<Row<T>> {
        let mut sealed = self.place_window();
        sealed.append(&mut self.open);
        sealed
    }

    /// Drops the sequences `keep` rejects from the window and the open rows (a row left
    /// empty closes): the packer's state for partitions taken from it.
    pub fn retain(&mut self, mut keep: impl FnMut(&T) -> bool) {
        self.window.retain(|s| keep(&s.item));
        self.window_tokens = self.window.iter().map(|s| s.tokens).sum();
        for row in &mut self.open {
            row.sequences.retain(|s| keep(&s.item));
            row.tokens = row.sequences.iter().map(|s| s.tokens).sum();
        }
        self.open.retain(|row| !row.sequences.is_empty());
    }

    /// Sequences and tokens waiting (in the window and in open rows).
    pub fn held(&self) -> (usize, usize) {
        let in_rows: usize = self.open.iter().map(|r| r.sequences.len()).sum();
        let row_tokens: usize = self.open.iter().map(|r| r.tokens).sum();
        (self.window.len() + in_rows, self.window_tokens + row_tokens)
    }

    fn place_window(&mut self) -> Vec<Row<T>> {
        let mut window = std::mem::take(&mut self.window);
        self.window_tokens = 0;
        // Largest first; ties keep arrival order (a stable sort), so packing is deterministic.
        window.sort_by_key(|s| std::cmp::Reverse(s.tokens));
        let capacity = self.settings.row_capacity;
        for sequence in window {
            match self.open.iter_mut().find(|row| row.tokens + sequence.tokens <= capacity) {
                Some(row) => {
                    row.tokens += sequence.tokens;
                    row.sequences.push(sequence);
                }
                None => self.open.push(Row { tokens: sequence.tokens, sequences: vec![sequence] }),
            }
        }
        let threshold = (self.settings.seal_fill * capacity as f64).ceil() as usize;
        let (full, open): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.open).into_iter().partition(|r| r.tokens >= threshold);
        self.open = open;
        let mut sealed = full;
        if self.open.len() > self.settings.max_open_rows {
            self.open.sort_by_key(|r| std::cmp::Reverse(r.tokens));
            let excess = self.open.len() - self.settings.max_open_rows;
            sealed.extend(self.open.drain(..excess));
        }
        sealed
    }
}

/// Offline first-fit-decreasing over all lengths at once: the reference for fill ratio.
pub fn offline_ffd(lengths: &[usize], capacity: usize) -> Vec<usize> {
    let mut sorted: Vec<usize> = lengths.iter().copied().filter(|&l| l <= capacity).collect();
    sorted.sort_unstable_by(|a, b| b.cmp(a));
    let mut rows: Vec<usize> = Vec::new();
    for length in sorted {
        match rows.iter_mut().find(|used| **used + length <= capacity) {
            Some(used) => *used += length,
            None => rows.push(length),
        }
    }
    rows
}

/// tokens / (rows * capacity).
pub fn fill_ratio(row_tokens: impl IntoIterator<Item = usize>, capacity: usize) -> f64 {
    let (mut rows, mut tokens) = (0usize, 0usize);
    for t in row_tokens {
        rows += 1;
        tokens += t;
    }
    if rows == 0 {
        0.0
    } else {
        tokens as f64 / (rows * capacity) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// Lengths drawn like the paper's traces: log-normal-ish around a mean, capped at a row.
    fn lengths(n: usize, mean: f64, capacity: usize, seed: u64) -> Vec<usize> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        (0..n)
            .map(|_| {
                let z: f64 = (0..6).map(|_| rng.gen::<f64>()).sum::<f64>() - 3.0;
                ((mean * (0.8 * z).exp() / 1.37) as usize).clamp(50, capacity)
            })
            .collect()
    }

    #[test]
    fn every_sequence_lands_whole_in_one_row_and_no_row_overflows() {
        let capacity = 60_000;
        let input = lengths(5_000, 15_500.0, capacity, 1);
        let mut packer = OnlinePacker::new(PackingSettings::new(capacity));
        let mut rows = Vec::new();
        for (i, &tokens) in input.iter().enumerate() {
            rows.extend(packer.push(Sequence { tokens, item: i }).unwrap());
            let (held_sequences, _) = packer.held();
            assert!(held_sequences <= 2048 + 64 * 60, "memory stays bounded");
        }
        rows.extend(packer.finish());
        let mut seen: Vec<usize> = rows.iter().flat_map(|r| r.sequences.iter().map(|s| s.item)).collect();
        seen.sort_unstable();
        assert_eq!(seen, (0..input.len()).collect::<Vec<_>>(), "each sequence exactly once");
        for row in &rows {
            assert!(row.tokens <= capacity);
            assert_eq!(row.tokens, row.sequences.iter().map(|s| s.tokens).sum::<usize>());
        }
        let total: usize = rows.iter().map(|r| r.tokens).sum();
        assert_eq!(total, input.iter().sum::<usize>(), "every token accounted for");
    }

    #[test]
    fn online_fill_is_close_to_offline_ffd() {
        let capacity = 60_000;
        for (mean, seed) in [(3_500.0, 2), (15_500.0, 3)] {
            let input = lengths(20_000, mean, capacity, seed);
            let mut packer = OnlinePacker::new(PackingSettings::new(capacity));
            let mut rows = Vec::new();
            for (i, &tokens) in input.iter().enumerate() {
                rows.extend(packer.push(Sequence { tokens, item: i }).unwrap());
            }
            rows.extend(packer.finish());
            let online = fill_ratio(rows.iter().map(|r| r.tokens), capacity);
            let offline = fill_ratio(offline_ffd(&input, capacity), capacity);
            eprintln!("mean {mean}: online fill {online:.4}, offline FFD {offline:.4}");
            assert!(offline - online < 0.01, "mean {mean}: online {online:.4} vs offline {offline:.4}");
        }
    }

    #[test]
    fn too_long_sequences_are_refused_with_their_length() {
        let mut packer = OnlinePacker::new(PackingSettings::new(100));
        assert_eq!(
            packer.push(Sequence { tokens: 101, item: () }).unwrap_err().to_string(),
            "sequence of 101 tokens is longer than a row (100 tokens)"
        );
        assert!(packer.push(Sequence { tokens: 100, item: () }).is_ok());
    }

    #[test]
    fn retain_drops_sequences_from_the_window_and_the_open_rows() {
        let mut settings = PackingSettings::new(100);
        settings.window_sequences = 3;
        let mut packer = OnlinePacker::new(settings);
        for (tokens, item) in [(60, 0), (30, 1), (50, 2), (20, 3)] {
            assert!(packer.push(Sequence { tokens, item }).unwrap().is_empty());
        }
        assert_eq!(packer.held(), (4, 160), "rows [60, 30] and [50], item 3 in the window");
        packer.retain(|item| item % 2 == 0);
        assert_eq!(packer.held(), (2, 110));
        let rows = packer.finish();
        let items: Vec<Vec<i32>> = rows.iter().map(|r| r.sequences.iter().map(|s| s.item).collect()).collect();
        assert_eq!(items, [vec![0], vec![2]]);
        assert_eq!(rows.iter().map(|r| r.tokens).collect::<Vec<_>>(), [60, 50]);
    }
}
