"""What a run's figures mean: the poisoning report, the what-if, the run summary and its types
(``summary.json`` and the sweep table as pydantic models), the study report. Imports
``attacks`` and below."""
