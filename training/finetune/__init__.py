"""Fine-tuning the Li–P–S–Cl student on CP2K PBE/DZVP-MOLOPT labels (issue 16, item 4): which shipped
configurations to relabel (:mod:`training.finetune.select`) and the CP2K reference barrier of the Li⁺-vacancy
hop in Li2S (:mod:`training.finetune.vacancy_barrier`)."""
