//! Pareto analysis over stored runs: non-dominated sorting (2–5 objectives, each minimised or
//! maximised), fronts by rank, hypervolume for 2 and 3 objectives, and a knee point.
//!
//! Internally every objective is turned into "smaller is better" (maximised ones negated; NaN
//! becomes +∞, the worst). Identical points do not dominate each other and share a rank.
//! Two objectives: one sort and a sweep (O(n log n) for all ranks). Three: a sweep with a
//! staircase in a `BTreeMap` per front (O(n log n) per front). Four and five: a sort by the
//! coordinate sum, then pairwise checks against the growing front.

use std::cmp::Ordering;
use std::collections::BTreeMap;

/// Whether smaller or larger values of an objective are better.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Sense {
    Minimize,
    Maximize,
}

impl Sense {
    /// The sense a metric has by nature: accuracies and speeds up, everything else down.
    pub fn for_metric(name: &str) -> Sense {
        let up = name.ends_with("tok_s")
            || name.starts_with("task_")
            || name == "top1_agree"
            || name == "sparsity"
            || name == "rps_ratio"
            || name == "flattened_blocks";
        if up { Sense::Maximize } else { Sense::Minimize }
    }
}

/// Points turned into minimisation form.
fn to_min(points: &[Vec<f64>], senses: &[Sense]) -> Vec<Vec<f64>> {
    points
        .iter()
        .map(|p| {
            p.iter()
                .zip(senses)
                .map(|(&v, s)| match s {
                    _ if v.is_nan() => f64::INFINITY,
                    Sense::Minimize => v,
                    Sense::Maximize => -v,
                })
                .collect()
        })
        .collect()
}

fn lex(a: &[f64], b: &[f64]) -> Ordering {
    for (x, y) in a.iter().zip(b) {
        match x.total_cmp(y) {
            Ordering::Equal => {}
            o => return o,
        }
    }
    Ordering::Equal
}

/// `a` dominates `b` (minimisation): no worse anywhere, better somewhere.
pub fn dominates_min(a: &[f64], b: &[f64]) -> bool {
    a.iter().zip(b).all(|(x, y)| x <= y) && a.iter().zip(b).any(|(x, y)| x < y)
}

fn check(points: &[Vec<f64>], senses: &[Sense]) -> bool {
    (1..=5).contains(&senses.len()) && points.iter().all(|p| p.len() == senses.len())
}

/// Pareto rank of every point (0 = non-dominated, 1 = dominated only by rank 0, …).
///
/// Points whose length differs from `senses`, or more than five objectives, give every point
/// rank 0 and a warning: the caller's bug should not turn into a panic in a UI.
pub fn pareto_ranks(points: &[Vec<f64>], senses: &[Sense]) -> Vec<usize> {
    if !check(points, senses) {
        tracing::warn!(
            "pareto_ranks: {} objectives and points of mismatched length",
            senses.len()
        );
        return vec![0; points.len()];
    }
    let pts = to_min(points, senses);
    match senses.len() {
        1 => ranks_1d(&pts),
        2 => ranks_2d(&pts),
        _ => ranks_by_peeling(&pts),
    }
}

fn ranks_1d(pts: &[Vec<f64>]) -> Vec<usize> {
    let mut values: Vec<f64> = pts.iter().map(|p| p[0]).collect();
    values.sort_by(f64::total_cmp);
    values.dedup_by(|a, b| a.total_cmp(b) == Ordering::Equal);
    pts.iter()
        .map(|p| values.partition_point(|v| v.total_cmp(&p[0]) == Ordering::Less))
        .collect()
}

/// Sort by (x, y); a point's rank is the first front whose smallest y so far is above its y.
fn ranks_2d(pts: &[Vec<f64>]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..pts.len()).collect();
    order.sort_by(|&a, &b| lex(&pts[a], &pts[b]));
    let mut ranks = vec![0; pts.len()];
    let mut min_y: Vec<f64> = Vec::new();
    let mut prev: Option<usize> = None;
    for &i in &order {
        if let Some(p) = prev
            && lex(&pts[p], &pts[i]) == Ordering::Equal
        {
            ranks[i] = ranks[p];
            continue;
        }
        let y = pts[i][1];
        let k = min_y.partition_point(|&m| m <= y);
        if k == min_y.len() {
            min_y.push(y);
        } else {
            min_y[k] = y;
        }
        ranks[i] = k;
        prev = Some(i);
    }
    ranks
}

/// Repeatedly takes the non-dominated set of what is left.
fn ranks_by_peeling(pts: &[Vec<f64>]) -> Vec<usize> {
    let mut ranks = vec![usize::MAX; pts.len()];
    let mut left: Vec<usize> = (0..pts.len()).collect();
    let mut rank = 0;
    while !left.is_empty() {
        let front = front_min(pts, &left);
        let mut in_front = vec![false; pts.len()];
        for &i in &front {
            ranks[i] = rank;
            in_front[i] = true;
        }
        left.retain(|&i| !in_front[i]);
        rank += 1;
    }
    ranks
}

/// `f64` ordered by `total_cmp`, as a map key.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Key(f64);
impl Eq for Key {}
impl PartialOrd for Key {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Key {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.total_cmp(&other.0)
    }
}

/// Non-dominated members of `subset` (minimisation), any number of objectives.
fn front_min(pts: &[Vec<f64>], subset: &[usize]) -> Vec<usize> {
    let mut order = subset.to_vec();
    order.sort_by(|&a, &b| lex(&pts[a], &pts[b]));
    let mut out = Vec::new();
    let dims = pts.first().map_or(0, Vec::len);
    if dims == 3 {
        // Staircase over (y, z) of the points kept so far: y ascending, z strictly descending.
        let mut stairs: BTreeMap<Key, f64> = BTreeMap::new();
        let mut prev: Option<usize> = None;
        for &i in &order {
            let (y, z) = (pts[i][1], pts[i][2]);
            if let Some(p) = prev
                && lex(&pts[p], &pts[i]) == Ordering::Equal
            {
                out.push(i);
                continue;
            }
            let dominated = stairs
                .range(..=Key(y))
                .next_back()
                .is_some_and(|(_, &sz)| sz <= z);
            if dominated {
                continue;
            }
            let covered: Vec<Key> = stairs
                .range(Key(y)..)
                .take_while(|(_, sz)| **sz >= z)
                .map(|(k, _)| *k)
                .collect();
            for k in covered {
                stairs.remove(&k);
            }
            stairs.insert(Key(y), z);
            out.push(i);
            prev = Some(i);
        }
        return out;
    }
    // General case: a point sorted later can never dominate an earlier one (lexicographic
    // order), so each point is checked only against the front found so far.
    for &i in &order {
        if !out.iter().any(|&j: &usize| dominates_min(&pts[j], &pts[i])) {
            out.push(i);
        }
    }
    out
}

/// Indices of the non-dominated points, sorted by the first objective (ascending value).
pub fn front(points: &[Vec<f64>], senses: &[Sense]) -> Vec<usize> {
    if !check(points, senses) {
        return Vec::new();
    }
    let pts = to_min(points, senses);
    let all: Vec<usize> = (0..pts.len()).collect();
    let mut f = match senses.len() {
        2 | 1 => {
            let ranks = if senses.len() == 1 {
                ranks_1d(&pts)
            } else {
                ranks_2d(&pts)
            };
            all.into_iter().filter(|&i| ranks[i] == 0).collect()
        }
        _ => front_min(&pts, &all),
    };
    f.sort_by(|&a, &b| points[a][0].total_cmp(&points[b][0]).then(a.cmp(&b)));
    f
}

/// Volume dominated by the points and bounded by `reference` (2 or 3 objectives; other counts
/// give 0). Points that do not strictly beat the reference in every objective add nothing.
pub fn hypervolume(points: &[Vec<f64>], senses: &[Sense], reference: &[f64]) -> f64 {
    if !check(points, senses) || reference.len() != senses.len() || !(2..=3).contains(&senses.len())
    {
        return 0.0;
    }
    let pts = to_min(points, senses);
    let r = to_min(&[reference.to_vec()], senses).remove(0);
    let inside: Vec<Vec<f64>> = pts
        .into_iter()
        .filter(|p| p.iter().zip(&r).all(|(x, rr)| x < rr))
        .collect();
    if senses.len() == 2 {
        hv2(&inside, r[0], r[1])
    } else {
        // Slices along z: between consecutive z values the cross-section is the 2-D
        // hypervolume of the points at or below that z.
        let mut order: Vec<usize> = (0..inside.len()).collect();
        order.sort_by(|&a, &b| inside[a][2].total_cmp(&inside[b][2]));
        let mut vol = 0.0;
        let mut active: Vec<Vec<f64>> = Vec::new();
        for (k, &i) in order.iter().enumerate() {
            active.push(inside[i].clone());
            let z_next = order.get(k + 1).map_or(r[2], |&j| inside[j][2]);
            let dz = z_next - inside[i][2];
            if dz > 0.0 {
                vol += dz * hv2(&active, r[0], r[1]);
            }
        }
        vol
    }
}

/// The hypervolume of the first `k` points for every `k` (points in the order they were
/// measured): how a search's measured front grew, trial by trial, as optuna's history plot
/// shows a study. Two objectives, one shared reference.
pub fn hypervolume_history(points: &[Vec<f64>], senses: &[Sense], reference: &[f64]) -> Vec<f64> {
    (1..=points.len())
        .map(|k| hypervolume(&points[..k], senses, reference))
        .collect()
}

/// 2-D hypervolume (minimisation) of points already inside the reference box.
fn hv2(pts: &[Vec<f64>], rx: f64, ry: f64) -> f64 {
    let mut xy: Vec<(f64, f64)> = pts.iter().map(|p| (p[0], p[1])).collect();
    xy.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.total_cmp(&b.1)));
    let mut area = 0.0;
    let mut best_y = ry;
    // Walk x ascending; each point that lowers the best y adds a strip up to the next x.
    let mut stairs: Vec<(f64, f64)> = Vec::new();
    for (x, y) in xy {
        if y < best_y {
            stairs.push((x, y));
            best_y = y;
        }
    }
    for (k, &(x, y)) in stairs.iter().enumerate() {
        let x_next = stairs.get(k + 1).map_or(rx, |s| s.0);
        area += (x_next - x) * (ry - y);
    }
    area
}

/// The front's knee: the front point farthest from the straight line (two objectives) or
/// closest to the ideal point (more), after scaling each objective to 0–1 over the front.
/// `None` for no points or a malformed call.
pub fn knee_point(points: &[Vec<f64>], senses: &[Sense]) -> Option<usize> {
    let f = front(points, senses);
    if f.len() <= 2 {
        return f.first().copied();
    }
    let pts = to_min(points, senses);
    let dims = senses.len();
    let (mut lo, mut hi) = (vec![f64::INFINITY; dims], vec![f64::NEG_INFINITY; dims]);
    for &i in &f {
        for d in 0..dims {
            lo[d] = lo[d].min(pts[i][d]);
            hi[d] = hi[d].max(pts[i][d]);
        }
    }
    let norm = |i: usize| -> Vec<f64> {
        (0..dims)
            .map(|d| {
                let span = hi[d] - lo[d];
                if span > 0.0 && span.is_finite() {
                    (pts[i][d] - lo[d]) / span
                } else {
                    0.0
                }
            })
            .collect()
    };
    let score = |i: usize| -> f64 {
        let p = norm(i);
        if dims == 2 {
            // Distance below the line through the extremes (0, 1) and (1, 0).
            (1.0 - p[0] - p[1]) / std::f64::consts::SQRT_2
        } else {
            -p.iter().map(|v| v * v).sum::<f64>().sqrt()
        }
    };
    // The first of equal scores wins, so duplicates resolve to the lowest index.
    let mut best: Option<(usize, f64)> = None;
    for &i in f.iter().filter(|&&i| pts[i].iter().all(|v| v.is_finite())) {
        let s = score(i);
        if best.is_none_or(|(_, b)| s > b) {
            best = Some((i, s));
        }
    }
    best.map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simple_2d() {
        let p = vec![
            vec![1.0, 5.0],
            vec![2.0, 3.0],
            vec![3.0, 4.0],
            vec![4.0, 1.0],
            vec![2.0, 3.0],
        ];
        let s = [Sense::Minimize, Sense::Minimize];
        assert_eq!(pareto_ranks(&p, &s), vec![0, 0, 1, 0, 0]);
        assert_eq!(front(&p, &s), vec![0, 1, 4, 3]);
        // Reference (5, 6): strips x 1–2 (h 1), 2–4 (h 3), 4–5 (h 5).
        assert!((hypervolume(&p, &s, &[5.0, 6.0]) - (1.0 + 6.0 + 5.0)).abs() < 1e-12);
        assert_eq!(knee_point(&p, &s), Some(1));
    }

    #[test]
    fn maximize_flips() {
        let p = vec![vec![1.0, 1.0], vec![2.0, 2.0]];
        assert_eq!(
            pareto_ranks(&p, &[Sense::Minimize, Sense::Maximize]),
            vec![0, 0]
        );
        assert_eq!(
            pareto_ranks(&p, &[Sense::Minimize, Sense::Minimize]),
            vec![0, 1]
        );
    }

    #[test]
    fn malformed_is_not_a_panic() {
        assert_eq!(pareto_ranks(&[vec![1.0]], &[Sense::Minimize; 2]), vec![0]);
        assert!(front(&[vec![1.0; 6]], &[Sense::Minimize; 6]).is_empty());
        assert_eq!(knee_point(&[], &[Sense::Minimize; 2]), None);
    }

    #[test]
    fn hypervolume_history_never_falls_and_ends_at_the_whole_set() {
        let senses = [Sense::Minimize, Sense::Minimize];
        let pts = vec![
            vec![3.0, 3.0],
            vec![1.0, 4.0],
            vec![3.5, 3.5],
            vec![2.0, 1.0],
        ];
        let r = [5.0, 5.0];
        let h = hypervolume_history(&pts, &senses, &r);
        assert_eq!(h.len(), 4);
        assert_eq!(h[0], 4.0);
        assert!(h.windows(2).all(|w| w[1] >= w[0]));
        // The dominated third point adds nothing.
        assert_eq!(h[2], h[1]);
        assert_eq!(h[3], hypervolume(&pts, &senses, &r));
    }
}
