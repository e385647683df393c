"""Running things: one experiment (the attack registry), the catalogues of presets, sweeps and
the study, sweeps and studies, the run store and index, the job queue, thread counts, resource
estimates and the ``fedsct`` command. The top layer: imports everything below."""
