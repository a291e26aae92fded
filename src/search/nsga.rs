//! NSGA-II (Deb et al. 2002) over discrete genomes: each gene picks one of a few options (a
//! layer's candidate setting). Non-dominated sorting from the store's Pareto code, crowding
//! distance to keep the front spread, binary tournaments, uniform crossover, and a mutation
//! that moves a gene to a neighbouring option (options are sorted by cost, so a neighbour is a
//! small step along the trade-off) or, rarely, to any option.

use std::collections::HashSet;

use crate::rng::Rng;
use crate::store::pareto::{Sense, pareto_ranks};

/// How long and how wide the search runs.
#[derive(Debug, Clone, Copy)]
pub struct NsgaOptions {
    pub population: usize,
    pub generations: usize,
    pub seed: u64,
}

impl Default for NsgaOptions {
    fn default() -> Self {
        Self {
            population: 120,
            generations: 300,
            seed: 0,
        }
    }
}

/// One evaluated genome.
#[derive(Debug, Clone)]
pub struct Individual {
    pub genes: Vec<usize>,
    /// Objective values, every one minimised; non-finite values rank as worst.
    pub objectives: Vec<f64>,
}

/// Crowding distance of each member of one front (larger: more isolated; ends infinite).
fn crowding(front: &[&Individual]) -> Vec<f64> {
    let n = front.len();
    let mut d = vec![0.0f64; n];
    if n == 0 {
        return d;
    }
    for m in 0..front[0].objectives.len() {
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by(|&a, &b| front[a].objectives[m].total_cmp(&front[b].objectives[m]));
        let (lo, hi) = (
            front[order[0]].objectives[m],
            front[order[n - 1]].objectives[m],
        );
        d[order[0]] = f64::INFINITY;
        d[order[n - 1]] = f64::INFINITY;
        let span = hi - lo;
        if !(span.is_finite() && span > 0.0) {
            continue;
        }
        for w in order.windows(3) {
            d[w[1]] += (front[w[2]].objectives[m] - front[w[0]].objectives[m]) / span;
        }
    }
    d
}

/// Ranks and crowding of a population.
fn rank_and_crowd(pop: &[Individual]) -> (Vec<usize>, Vec<f64>) {
    let points: Vec<Vec<f64>> = pop.iter().map(|i| i.objectives.clone()).collect();
    let senses = vec![Sense::Minimize; points.first().map_or(1, Vec::len)];
    let ranks = pareto_ranks(&points, &senses);
    let mut crowd = vec![0.0; pop.len()];
    let max_rank = ranks.iter().copied().max().unwrap_or(0);
    for r in 0..=max_rank {
        let idx: Vec<usize> = (0..pop.len()).filter(|&i| ranks[i] == r).collect();
        let members: Vec<&Individual> = idx.iter().map(|&i| &pop[i]).collect();
        for (&i, c) in idx.iter().zip(crowding(&members)) {
            crowd[i] = c;
        }
    }
    (ranks, crowd)
}

/// Runs NSGA-II. `options[g]` is the number of options of gene `g`; `evaluate` gives a
/// genome's objectives (all minimised); `seeds` join the first population (e.g. exact
/// single-budget solutions), as do the two corners (all first options, all last). Returns the
/// final non-dominated set, one genome per point, sorted by the first objective.
pub fn nsga2(
    options: &[usize],
    evaluate: &dyn Fn(&[usize]) -> Vec<f64>,
    seeds: Vec<Vec<usize>>,
    opts: NsgaOptions,
) -> Vec<Individual> {
    let mut rng = Rng::new(opts.seed);
    let size = opts.population.max(4);
    let make = |genes: Vec<usize>| Individual {
        objectives: evaluate(&genes),
        genes,
    };
    // The two corners (every gene at its first option, every gene at its last) start in the
    // population: options are ordered along the trade-off, so these are the front's ends.
    let corners = [
        vec![0; options.len()],
        options.iter().map(|&n| n.saturating_sub(1)).collect(),
    ];
    let mut pop: Vec<Individual> = seeds
        .into_iter()
        .chain(corners)
        .filter(|s| s.len() == options.len() && s.iter().zip(options).all(|(&g, &n)| g < n))
        .take(size)
        .map(make)
        .collect();
    while pop.len() < size {
        let genes = options.iter().map(|&n| rng.below(n)).collect();
        pop.push(make(genes));
    }
    let mutate_p = 1.0 / options.len().max(1) as f64;
    for _ in 0..opts.generations {
        let (ranks, crowd) = rank_and_crowd(&pop);
        let better = |a: usize, b: usize| {
            ranks[a] < ranks[b] || (ranks[a] == ranks[b] && crowd[a] > crowd[b])
        };
        let tournament = |rng: &mut Rng| {
            let (a, b) = (rng.below(pop.len()), rng.below(pop.len()));
            if better(a, b) { a } else { b }
        };
        let mut children = Vec::with_capacity(size);
        while children.len() < size {
            let (pa, pb) = (tournament(&mut rng), tournament(&mut rng));
            let mut genes: Vec<usize> = pop[pa]
                .genes
                .iter()
                .zip(&pop[pb].genes)
                .map(|(&a, &b)| if rng.chance(0.5) { a } else { b })
                .collect();
            for (g, &n) in genes.iter_mut().zip(options) {
                if n > 1 && rng.chance(mutate_p) {
                    *g = if rng.chance(0.8) {
                        // A neighbouring option.
                        if *g == 0 || (*g + 1 < n && rng.chance(0.5)) {
                            *g + 1
                        } else {
                            *g - 1
                        }
                    } else {
                        rng.below(n)
                    };
                }
            }
            children.push(make(genes));
        }
        pop.extend(children);
        // Environmental selection: whole fronts, the last one cut by crowding.
        let (ranks, crowd) = rank_and_crowd(&pop);
        let mut order: Vec<usize> = (0..pop.len()).collect();
        order.sort_by(|&a, &b| ranks[a].cmp(&ranks[b]).then(crowd[b].total_cmp(&crowd[a])));
        let mut seen = HashSet::new();
        let keep: Vec<usize> = order
            .into_iter()
            .filter(|&i| seen.insert(pop[i].genes.clone()))
            .take(size)
            .collect();
        let mut next: Vec<Option<Individual>> = pop.into_iter().map(Some).collect();
        pop = keep.into_iter().filter_map(|i| next[i].take()).collect();
    }
    let (ranks, _) = rank_and_crowd(&pop);
    let mut front: Vec<Individual> = pop
        .into_iter()
        .zip(ranks)
        .filter(|(i, r)| *r == 0 && i.objectives.iter().all(|v| v.is_finite()))
        .map(|(i, _)| i)
        .collect();
    front.sort_by(|a, b| a.objectives[0].total_cmp(&b.objectives[0]));
    // Different genomes with the same objectives are one point of the front.
    front.dedup_by(|a, b| a.objectives == b.objectives);
    front
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::search::knapsack::{Item, Table, solve};
    use crate::store::pareto::dominates_min;

    /// A toy with a known front: 12 genes of 5 options; gene option `k` costs `k` and has
    /// error `(4 - k)²·w_g`. The exact front for each total cost is the knapsack optimum.
    fn toy() -> (Vec<usize>, impl Fn(&[usize]) -> Vec<f64>) {
        let weights: Vec<f64> = (0..12).map(|g| 1.0 + g as f64 * 0.5).collect();
        let eval = move |genes: &[usize]| {
            let cost: usize = genes.iter().sum();
            let err: f64 = genes
                .iter()
                .zip(&weights)
                .map(|(&k, w)| ((4 - k) as f64).powi(2) * w)
                .sum();
            vec![cost as f64, err]
        };
        (vec![5; 12], eval)
    }

    /// The toy as knapsack groups: its exact front.
    fn toy_groups() -> Vec<Vec<Item>> {
        (0..12)
            .map(|g| {
                (0..5)
                    .map(|k| Item {
                        cost: k as u64,
                        value: ((4 - k) as f64).powi(2) * (1.0 + g as f64 * 0.5),
                    })
                    .collect()
            })
            .collect()
    }

    #[test]
    fn front_is_non_dominated_and_covers_the_known_front() {
        let (options, eval) = toy();
        let front = nsga2(&options, &eval, Vec::new(), NsgaOptions::default());
        for a in &front {
            for b in &front {
                assert!(!dominates_min(&a.objectives, &b.objectives));
            }
        }
        // The exact best error at each total cost, by the knapsack.
        let groups = toy_groups();
        let mut covered = 0;
        for budget in (0..=48u64).step_by(4) {
            let exact = Table::build(&groups, &[], budget)
                .unwrap()
                .best(budget as usize);
            let found = front
                .iter()
                .filter(|i| i.objectives[0] <= budget as f64)
                .map(|i| i.objectives[1])
                .fold(f64::INFINITY, f64::min);
            // Within 5 % of the exact optimum at every sampled budget.
            assert!(
                found <= exact * 1.05 + 1e-9,
                "budget {budget}: {found} vs {exact}"
            );
            covered += 1;
        }
        assert_eq!(covered, 13);
    }

    #[test]
    fn an_optimal_seed_stays_on_the_front() {
        let (options, eval) = toy();
        // The exact optimum at total cost 24: the heaviest genes (largest weights) get the
        // most, as the knapsack says.
        let groups = toy_groups();
        let seed = solve(&groups, 24).unwrap();
        let target = eval(&seed);
        let front = nsga2(
            &options,
            &eval,
            vec![seed],
            NsgaOptions {
                generations: 3,
                ..NsgaOptions::default()
            },
        );
        assert!(front.iter().any(|i| i.objectives == target), "{target:?}");
    }
}
