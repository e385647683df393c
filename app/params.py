"""The dashboard's URL query parameters, one name each: a page keeps the run (or choice) it
shows in the URL, so that a reload or a shared link opens the same thing. Public: links and
bookmarks use these names."""

FEDERATION_RUN = "run"  # the Federation page's run
MEMBERSHIP_RUN, MEMBERSHIP_COMPARE, AUDIT_RUN = "mia_run", "mia_compare", "audit_run"
INVERSION_RUN = "inv_run"
POISONING_RUN, BACKDOOR_RUN = "poi_run", "bd_run"
REPORT_RUN = "report_run"
HOME_RUN = "home_run"
RUNS_OPEN, RUNS_FIRST, RUNS_SECOND = "runs_open", "runs_a", "runs_b"
