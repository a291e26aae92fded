//! Colours and small visual constants, in one place so panels agree on what red means.

use eframe::egui::Color32;

/// Errors and invalid cells.
pub const ERROR: Color32 = Color32::from_rgb(0xe0, 0x50, 0x50);
/// Warnings and notes (rule overlaps, estimates).
pub const WARN: Color32 = Color32::from_rgb(0xe0, 0xa0, 0x30);
/// Success (finished jobs).
pub const OK: Color32 = Color32::from_rgb(0x50, 0xb0, 0x60);
/// The Pareto front line (pink: on no point of the colour ramp, and apart from the error red).
pub const FRONT: Color32 = Color32::from_rgb(0xff, 0x79, 0xc6);
/// The search's predicted front and its links to measured runs.
pub const PREDICTED: Color32 = Color32::from_rgb(0xc0, 0x90, 0xf0);
/// A run joined to its export as deployed.
pub const DEPLOYED: Color32 = Color32::from_rgb(0xf0, 0xa0, 0x50);
/// The selected run's marker.
pub const SELECTED: Color32 = Color32::from_rgb(0xff, 0xff, 0xff);
/// Plain run markers when nothing colours them.
pub const POINT: Color32 = Color32::from_rgb(0x4a, 0x90, 0xd9);
/// Set A / set B of the compare view.
pub const SET_A: Color32 = Color32::from_rgb(0x4a, 0x90, 0xd9);
pub const SET_B: Color32 = Color32::from_rgb(0xe0, 0x60, 0x90);
/// Sensitivity bars.
pub const BAR: Color32 = Color32::from_rgb(0xd0, 0x70, 0x40);

/// Categorical colours (technique families), distinguishable on a dark background.
pub const CATEGORICAL: [Color32; 8] = [
    Color32::from_rgb(0x4a, 0x90, 0xd9),
    Color32::from_rgb(0xe0, 0x80, 0x30),
    Color32::from_rgb(0x60, 0xb0, 0x60),
    Color32::from_rgb(0xd0, 0x50, 0x60),
    Color32::from_rgb(0x90, 0x70, 0xc0),
    Color32::from_rgb(0x90, 0x60, 0x40),
    Color32::from_rgb(0xd0, 0x80, 0xb0),
    Color32::from_rgb(0xa0, 0xa0, 0xa0),
];

/// A colour for a value in `0..=1` on a viridis-like ramp (dark violet, blue, teal, green,
/// yellow): ordered in lightness, readable for the colour-blind, and never grey in the middle,
/// so a heatmap's mid values do not look like missing ones.
pub fn ramp(t: f64) -> Color32 {
    const STOPS: [[f32; 3]; 5] = [
        [68.0, 1.0, 84.0],
        [59.0, 82.0, 139.0],
        [33.0, 145.0, 140.0],
        [94.0, 201.0, 98.0],
        [253.0, 231.0, 37.0],
    ];
    let t = if t.is_finite() {
        t.clamp(0.0, 1.0)
    } else {
        0.0
    } as f32;
    let x = t * (STOPS.len() - 1) as f32;
    let i = (x as usize).min(STOPS.len() - 2);
    let f = x - i as f32;
    let c = |j: usize| (STOPS[i][j] + (STOPS[i + 1][j] - STOPS[i][j]) * f).round() as u8;
    Color32::from_rgb(c(0), c(1), c(2))
}
