"""The nes model, shared by the seven nesYYYY-nes posteriors (one survey year each):
partyid7 ~ N(beta1 + beta2 real_ideo + beta3 race_adj + beta4..6 age groups
+ beta7 educ1 + beta8 gender + beta9 income, sigma); beta and sigma flat."""

from __future__ import annotations

import numpy as np

from kiln.bayes import Flat, HalfFlat, Model, Normal, ref


def model(data: dict) -> Model:
    age = np.asarray(data["age_discrete"])
    columns = {
        "real_ideo": data["real_ideo"], "race_adj": data["race_adj"],
        "age30_44": age == 2, "age45_64": age == 3, "age65up": age == 4,
        "educ1": data["educ1"], "gender": data["gender"], "income": data["income"],
    }
    beta = ref("beta")
    m = Model()
    mu = beta[0]
    for k, (name, column) in enumerate(columns.items(), start=1):
        m = m.data(name, np.asarray(column, float))
        mu = mu + beta[k] * ref(name)
    return (m.rv("beta", Flat(), shape=9)
            .rv("sigma", HalfFlat())
            .rv("y", Normal(mu, "sigma"))
            .obs("partyid7", "y", np.asarray(data["partyid7"], float)))
