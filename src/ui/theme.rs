//! Colours and small visual constants, in one place so panels agree on what red means.

use eframe::egui::Color32;

/// Errors and invalid cells.
pub const ERROR: Color32 = Color32::from_rgb(0xe0, 0x50, 0x50);
/// Warnings and notes (rule overlaps, estimates).
pub const WARN: Color32 = Color32::from_rgb(0xe0, 0xa0, 0x30);
/// Success (finished jobs).
pub const OK: Color32 = Color32::from_rgb(0x50, 0xb0, 0x60);
/// The Pareto front line (teal: apart from the colour ramp's yellow end and the error red).
pub const FRONT: Color32 = Color32::from_rgb(0x50, 0xd8, 0xc8);
/// The search's predicted front and its links to measured runs.
pub const PREDICTED: Color32 = Color32::from_rgb(0xc0, 0x90, 0xf0);
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

/// A colour for a value in `0..=1` on a blue → yellow ramp (perceptually ordered enough for
/// a third metric).
pub fn ramp(t: f64) -> Color32 {
    let t = if t.is_finite() {
        t.clamp(0.0, 1.0)
    } else {
        0.0
    } as f32;
    let lerp = |a: f32, b: f32| (a + (b - a) * t).round() as u8;
    Color32::from_rgb(lerp(40.0, 250.0), lerp(60.0, 220.0), lerp(180.0, 40.0))
}
