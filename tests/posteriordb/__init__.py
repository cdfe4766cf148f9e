"""The posteriordb reference posteriors, each written as a kiln model (`models/`).

`reference.py` loads a posterior's data and reference summary and checks draws against
it; `test_posteriordb.py` samples each model and applies the check; `bench/posteriordb.py`
times the same models against NumPyro.
"""
