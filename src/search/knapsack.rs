//! Exact multiple-choice knapsack: pick one option per group to minimise the summed value
//! with the summed cost within a budget. Dynamic programming over the cost (in units that
//! round every option's cost up, so a solution never exceeds the budget), with each group's
//! cheapest option subtracted first so the table spans only the costs that can differ.

/// One option of a group: its cost (bytes) and value (predicted KLD).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Item {
    pub cost: u64,
    pub value: f64,
}

/// Largest table width; beyond it the cost unit grows.
const MAX_CAPACITY: u64 = 40_000;

/// The table for every capacity up to a budget: `best(c)` and the choices reaching it.
pub struct Table {
    unit: u64,
    base_cost: u64,
    /// `best[c]`: least summed value within `c` units above the cheapest choice.
    best: Vec<f64>,
    /// `choice[g][c]`: the option of group `g` on the best path at capacity `c`.
    choice: Vec<Vec<u16>>,
    costs: Vec<Vec<u64>>,
}

impl Table {
    /// Solves for every capacity up to `budget`. `None` when even the cheapest choice of every
    /// group is over it. Options with a non-finite value are never chosen.
    pub fn build(groups: &[Vec<Item>], budget: u64) -> Option<Table> {
        let mins: Vec<u64> = groups
            .iter()
            .map(|g| g.iter().map(|i| i.cost).min().unwrap_or(0))
            .collect();
        let base_cost: u64 = mins.iter().sum();
        let extra = budget.checked_sub(base_cost)?;
        let unit = extra.div_ceil(MAX_CAPACITY).max(1);
        let capacity = (extra / unit) as usize;
        let costs: Vec<Vec<u64>> = groups
            .iter()
            .zip(&mins)
            .map(|(g, &m)| g.iter().map(|i| (i.cost - m).div_ceil(unit)).collect())
            .collect();
        let mut best = vec![0.0f64; capacity + 1];
        let mut choice = Vec::with_capacity(groups.len());
        for (g, cs) in groups.iter().zip(&costs) {
            let mut next = vec![f64::INFINITY; capacity + 1];
            let mut pick = vec![0u16; capacity + 1];
            for (j, (item, &w)) in g.iter().zip(cs).enumerate() {
                if !item.value.is_finite() {
                    continue;
                }
                let w = w as usize;
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
        }
        Some(Table {
            unit,
            base_cost,
            best,
            choice,
            costs,
        })
    }

    /// Capacities (in table units) the table spans.
    pub fn capacity(&self) -> usize {
        self.best.len() - 1
    }

    /// The cost a capacity stands for (an upper bound on its solution's cost).
    pub fn cost_of(&self, c: usize) -> u64 {
        self.base_cost + c as u64 * self.unit
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

    /// The choice (an option index per group) reaching [`Self::best`] at capacity `c`; `None`
    /// when no finite choice fits.
    pub fn solution(&self, c: usize) -> Option<Vec<usize>> {
        let mut c = c.min(self.capacity());
        if !self.best[c].is_finite() {
            return None;
        }
        let mut out = vec![0; self.choice.len()];
        for g in (0..self.choice.len()).rev() {
            let j = usize::from(self.choice[g][c]);
            out[g] = j;
            c -= self.costs[g][j] as usize;
        }
        Some(out)
    }
}

/// The least-value choice with total cost at most `budget`.
pub fn solve(groups: &[Vec<Item>], budget: u64) -> Option<Vec<usize>> {
    let t = Table::build(groups, budget)?;
    t.solution(t.capacity())
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
        let t = Table::build(&groups, 100).unwrap();
        // The least reachable sum is 2.54 (every group's best option).
        assert!(t.cheapest_within(2.0).is_none());
        for limit in [2.6, 3.0, 5.0, 9.0] {
            let c = t.cheapest_within(limit).unwrap();
            assert!(t.best(c) <= limit);
            // Nothing cheaper reaches it (brute force over every budget below).
            let cost = t.cost_of(c);
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
