//! Exact multiple-choice knapsack: pick one option per group to minimise the summed value
//! with the summed cost within a budget. Dynamic programming over the cost (in units that
//! round every option's cost up, so a solution never exceeds the budget), measured from the
//! cheapest way to reach each point, so the table spans only the costs that can differ.
//!
//! A [`Shortcut`] is an alternative to a run of groups: the path may jump over groups
//! `from..to` (which then take no option) at its own cost and value. This is how a block's
//! depth change is searched: dropping block `b` replaces the choices of its seven linears.

/// One option of a group: its cost (bytes) and value (predicted KLD).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Item {
    pub cost: u64,
    pub value: f64,
}

/// Groups `from..to` replaced by one option. The cost may be negative: it can remove bytes
/// counted outside the groups (a dropped block's norms).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Shortcut {
    pub from: usize,
    pub to: usize,
    pub cost: i64,
    pub value: f64,
}

/// A solution: each group's option (`None` where a shortcut jumped over it) and the
/// shortcuts taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Solution {
    pub options: Vec<Option<usize>>,
    pub shortcuts: Vec<usize>,
}

/// Largest table width; beyond it the cost unit grows.
const MAX_CAPACITY: u64 = 100_000;

/// How the best path reached a boundary at one capacity.
const BY_GROUP: u16 = u16::MAX;

/// The table for every capacity up to a budget: `best(c)` and the choices reaching it.
pub struct Table {
    unit: u64,
    base_cost: i64,
    /// `best[c]`: least summed value within `c` units above the cheapest choice.
    best: Vec<f64>,
    /// `choice[g][c]`: the option of group `g` on the best path to boundary `g + 1`.
    choice: Vec<Vec<u16>>,
    /// `costs[g][j]`: option `j` of group `g` in units above the cheapest path's step.
    costs: Vec<Vec<usize>>,
    /// `arrival[k][c]`: the shortcut the best path to boundary `k` ends with, or
    /// [`BY_GROUP`]; empty for boundaries no shortcut ends at.
    arrival: Vec<Vec<u16>>,
    shortcuts: Vec<Shortcut>,
    shortcut_costs: Vec<usize>,
}

impl Table {
    /// Solves for every capacity up to `budget`. `None` when even the cheapest path is over
    /// it. Options and shortcuts with a non-finite value are never chosen.
    pub fn build(groups: &[Vec<Item>], shortcuts: &[Shortcut], budget: u64) -> Option<Table> {
        let n = groups.len();
        assert!(
            shortcuts.iter().all(|s| s.from < s.to && s.to <= n),
            "a shortcut must jump over at least one group"
        );
        let ending = |k: usize| (0..shortcuts.len()).filter(move |&s| shortcuts[s].to == k);
        // `least[k]`: the cheapest path's cost to boundary `k` (before group `k`).
        let mut least = vec![0i64; n + 1];
        for k in 1..=n {
            let step = groups[k - 1]
                .iter()
                .map(|i| i.cost as i64)
                .min()
                .unwrap_or(0);
            least[k] = least[k - 1] + step;
            for s in ending(k) {
                least[k] = least[k].min(least[shortcuts[s].from] + shortcuts[s].cost);
            }
        }
        let base_cost = least[n];
        let extra = u64::try_from(budget as i128 - base_cost as i128).ok()?;
        let unit = extra.div_ceil(MAX_CAPACITY).max(1);
        let capacity = (extra / unit) as usize;
        let units = |above: i64| (above.max(0) as u64).div_ceil(unit) as usize;
        let costs: Vec<Vec<usize>> = groups
            .iter()
            .enumerate()
            .map(|(g, items)| {
                items
                    .iter()
                    .map(|i| units(least[g] + i.cost as i64 - least[g + 1]))
                    .collect()
            })
            .collect();
        let shortcut_costs: Vec<usize> = shortcuts
            .iter()
            .map(|s| units(least[s.from] + s.cost - least[s.to]))
            .collect();
        // Boundaries a shortcut starts from keep their table.
        let mut kept: Vec<Option<Vec<f64>>> = vec![None; n + 1];
        let mut best = vec![0.0f64; capacity + 1];
        let mut choice = Vec::with_capacity(n);
        let mut arrival = vec![Vec::new(); n + 1];
        for k in 0..=n {
            if k > 0 {
                let mut next = vec![f64::INFINITY; capacity + 1];
                let mut pick = vec![0u16; capacity + 1];
                for (j, (item, &w)) in groups[k - 1].iter().zip(&costs[k - 1]).enumerate() {
                    if !item.value.is_finite() {
                        continue;
                    }
                    for c in w..=capacity {
                        let v = best[c - w] + item.value;
                        if v < next[c] {
                            next[c] = v;
                            pick[c] = j as u16;
                        }
                    }
                }
                best = next;
                choice.push(pick);
                let mut how = Vec::new();
                for s in ending(k) {
                    let (Some(from), w) = (&kept[shortcuts[s].from], shortcut_costs[s]) else {
                        continue;
                    };
                    if !shortcuts[s].value.is_finite() {
                        continue;
                    }
                    if how.is_empty() {
                        how = vec![BY_GROUP; capacity + 1];
                    }
                    for c in w..=capacity {
                        let v = from[c - w] + shortcuts[s].value;
                        if v < best[c] {
                            best[c] = v;
                            how[c] = s as u16;
                        }
                    }
                }
                arrival[k] = how;
            }
            if shortcuts.iter().any(|s| s.from == k) {
                kept[k] = Some(best.clone());
            }
        }
        Some(Table {
            unit,
            base_cost,
            best,
            choice,
            costs,
            arrival,
            shortcuts: shortcuts.to_vec(),
            shortcut_costs,
        })
    }

    /// Capacities (in table units) the table spans.
    pub fn capacity(&self) -> usize {
        self.best.len() - 1
    }

    /// The cost a capacity stands for (an upper bound on its solution's cost).
    pub fn cost_of(&self, c: usize) -> i64 {
        self.base_cost + (c as u64 * self.unit) as i64
    }

    /// Least summed value within capacity `c`.
    pub fn best(&self, c: usize) -> f64 {
        self.best[c.min(self.capacity())]
    }

    /// The smallest capacity whose best value is at most `value` (the cheapest way to stay
    /// within a value budget); `None` when no capacity reaches it.
    pub fn cheapest_within(&self, value: f64) -> Option<usize> {
        // `best` never rises with the capacity.
        let c = self.best.partition_point(|&b| b > value);
        (c < self.best.len()).then_some(c)
    }

    /// The choices reaching [`Self::best`] at capacity `c`; `None` when no finite choice fits.
    pub fn solution(&self, c: usize) -> Option<Solution> {
        let mut c = c.min(self.capacity());
        if !self.best[c].is_finite() {
            return None;
        }
        let mut out = Solution {
            options: vec![None; self.choice.len()],
            shortcuts: Vec::new(),
        };
        let mut k = self.choice.len();
        while k > 0 {
            match self.arrival[k].get(c).copied() {
                Some(s) if s != BY_GROUP => {
                    let s = usize::from(s);
                    out.shortcuts.push(s);
                    c -= self.shortcut_costs[s];
                    k = self.shortcuts[s].from;
                }
                _ => {
                    let j = usize::from(self.choice[k - 1][c]);
                    out.options[k - 1] = Some(j);
                    c -= self.costs[k - 1][j];
                    k -= 1;
                }
            }
        }
        out.shortcuts.reverse();
        Some(out)
    }
}

/// The least-value choice (an option per group, no shortcuts) with total cost at most
/// `budget`.
pub fn solve(groups: &[Vec<Item>], budget: u64) -> Option<Vec<usize>> {
    let t = Table::build(groups, &[], budget)?;
    t.solution(t.capacity())?.options.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn brute(groups: &[Vec<Item>], budget: u64) -> Option<f64> {
        let mut best: Option<f64> = None;
        let mut idx = vec![0usize; groups.len()];
        loop {
            let cost: u64 = idx.iter().zip(groups).map(|(&j, g)| g[j].cost).sum();
            let value: f64 = idx.iter().zip(groups).map(|(&j, g)| g[j].value).sum();
            if cost <= budget && best.is_none_or(|b| value < b) {
                best = Some(value);
            }
            let mut g = 0;
            loop {
                if g == groups.len() {
                    return best;
                }
                idx[g] += 1;
                if idx[g] < groups[g].len() {
                    break;
                }
                idx[g] = 0;
                g += 1;
            }
        }
    }

    #[test]
    fn matches_brute_force_on_small_cases() {
        let mut rng = crate::rng::Rng::new(7);
        for case in 0..300 {
            let n = 1 + case % 5;
            let groups: Vec<Vec<Item>> = (0..n)
                .map(|_| {
                    (0..1 + rng.below(4))
                        .map(|_| Item {
                            cost: 1 + rng.below(40) as u64,
                            value: rng.below(1000) as f64 / 100.0,
                        })
                        .collect()
                })
                .collect();
            let budget = rng.below(40 * n) as u64;
            let exact = brute(&groups, budget);
            let got = solve(&groups, budget);
            match (exact, got) {
                (None, None) => {}
                (Some(v), Some(choice)) => {
                    let cost: u64 = choice.iter().zip(&groups).map(|(&j, g)| g[j].cost).sum();
                    let value: f64 = choice.iter().zip(&groups).map(|(&j, g)| g[j].value).sum();
                    assert!(cost <= budget, "case {case}: over budget");
                    assert!((value - v).abs() < 1e-9, "case {case}: {value} vs {v}");
                }
                (e, g) => panic!("case {case}: brute {e:?} vs dp {g:?}"),
            }
        }
    }

    /// Every path from boundary `k` on: the least value within `budget`.
    fn brute_paths(
        groups: &[Vec<Item>],
        shortcuts: &[Shortcut],
        k: usize,
        cost: i64,
        value: f64,
        budget: i64,
    ) -> Option<f64> {
        if k == groups.len() {
            return (cost <= budget).then_some(value);
        }
        let by_option = groups[k].iter().filter_map(|i| {
            brute_paths(
                groups,
                shortcuts,
                k + 1,
                cost + i.cost as i64,
                value + i.value,
                budget,
            )
        });
        let by_shortcut = shortcuts.iter().filter(|s| s.from == k).filter_map(|s| {
            brute_paths(
                groups,
                shortcuts,
                s.to,
                cost + s.cost,
                value + s.value,
                budget,
            )
        });
        by_option.chain(by_shortcut).reduce(f64::min)
    }

    #[test]
    fn shortcuts_match_brute_force_on_small_cases() {
        let mut rng = crate::rng::Rng::new(11);
        for case in 0..300 {
            let n = 2 + case % 5;
            let groups: Vec<Vec<Item>> = (0..n)
                .map(|_| {
                    (0..1 + rng.below(3))
                        .map(|_| Item {
                            cost: 5 + rng.below(30) as u64,
                            value: rng.below(1000) as f64 / 100.0,
                        })
                        .collect()
                })
                .collect();
            let shortcuts: Vec<Shortcut> = (0..rng.below(4))
                .map(|_| {
                    let from = rng.below(n);
                    Shortcut {
                        from,
                        to: from + 1 + rng.below(n - from),
                        cost: rng.below(40) as i64 - 10,
                        value: rng.below(1500) as f64 / 100.0,
                    }
                })
                .collect();
            let budget = rng.below(30 * n) as u64;
            let exact = brute_paths(&groups, &shortcuts, 0, 0, 0.0, budget as i64);
            let got =
                Table::build(&groups, &shortcuts, budget).and_then(|t| t.solution(t.capacity()));
            match (exact, got) {
                (None, None) => {}
                (Some(v), Some(sol)) => {
                    // Replay the solution: every group covered once, by an option or a
                    // shortcut, within the budget, at the brute-force value.
                    let (mut cost, mut value, mut k) = (0i64, 0.0, 0);
                    let mut taken = sol.shortcuts.iter().peekable();
                    while k < n {
                        if let Some(&&s) = taken.peek()
                            && shortcuts[s].from == k
                        {
                            assert!(sol.options[k..shortcuts[s].to].iter().all(Option::is_none));
                            cost += shortcuts[s].cost;
                            value += shortcuts[s].value;
                            k = shortcuts[s].to;
                            taken.next();
                            continue;
                        }
                        let j = sol.options[k].expect("a group neither chosen nor jumped over");
                        cost += groups[k][j].cost as i64;
                        value += groups[k][j].value;
                        k += 1;
                    }
                    assert!(
                        taken.next().is_none(),
                        "case {case}: a shortcut out of order"
                    );
                    assert!(cost <= budget as i64, "case {case}: over budget");
                    assert!((value - v).abs() < 1e-9, "case {case}: {value} vs {v}");
                }
                (e, g) => panic!("case {case}: brute {e:?} vs dp {g:?}"),
            }
        }
    }

    #[test]
    fn cheapest_within_a_value_budget_matches_brute_force() {
        let groups: Vec<Vec<Item>> = (0..4)
            .map(|g| {
                (0..3)
                    .map(|j| Item {
                        cost: (j * 3 + g) as u64,
                        value: 4.0 / (1.0 + (j * 2 + g) as f64),
                    })
                    .collect()
            })
            .collect();
        let t = Table::build(&groups, &[], 100).unwrap();
        // The least reachable sum is 2.54 (every group's best option).
        assert!(t.cheapest_within(2.0).is_none());
        for limit in [2.6, 3.0, 5.0, 9.0] {
            let c = t.cheapest_within(limit).unwrap();
            assert!(t.best(c) <= limit);
            // Nothing cheaper reaches it (brute force over every budget below).
            let cost = t.cost_of(c) as u64;
            for b in 0..cost {
                assert!(
                    brute(&groups, b).is_none_or(|v| v > limit),
                    "limit {limit} budget {b}"
                );
            }
        }
    }

    #[test]
    fn coarse_units_never_exceed_the_budget() {
        let groups: Vec<Vec<Item>> = (0..50)
            .map(|g| {
                (0..4)
                    .map(|j| Item {
                        cost: 1_000_003 * (j + 1) + g * 7,
                        value: 1.0 / (j as f64 + 1.0) + g as f64 * 1e-3,
                    })
                    .collect()
            })
            .collect();
        for budget in [60_000_000u64, 120_000_000, 150_000_123] {
            let choice = solve(&groups, budget).unwrap();
            let cost: u64 = choice.iter().zip(&groups).map(|(&j, g)| g[j].cost).sum();
            assert!(cost <= budget);
        }
        assert!(solve(&groups, 1_000).is_none());
    }
}
