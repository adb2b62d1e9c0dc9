"""The documented JSON keys of ``ionscreen analyze --json`` (a contract with users; tests check it)."""

#: The per-temperature keys of ``analyze --json``, exactly.
ANALYZE_KEYS = (
    "diffusivity_cm2_s",
    "diffusivity_ci95_cm2_s",
    "charge_diffusivity_cm2_s",
    "haven_ratio",
    "conductivity_mS_cm",
    "conductivity_ci95_mS_cm",
    "ion_charge",
    "n_hops",
    "flags",
    # added with the data-chosen fit window (older keys keep their meaning)
    "diffusivity_upper_bound_cm2_s",
    "charge_diffusivity_ci95_cm2_s",
    "haven_ratio_ci95",
    "fit_window_ps",
    "analysis_note",
)
ARRHENIUS_KEYS = ("activation_energy_eV", "activation_energy_ci95_eV", "diffusivity_300K_cm2_s", "conductivity_300K_mS_cm",
                  "diffusivity_300K_ci95_cm2_s", "conductivity_300K_ci95_mS_cm", "diffusivity_300K_upper_bound_cm2_s",
                  "activation_energy_lower_bound_eV")
