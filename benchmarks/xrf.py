"""XRF: spectra/s of lightpipe's linear fit against PyMca's ``FastXRFLinearFit`` on the same spectra and configuration.

What it measures
    Seconds to fit ``--spectra`` spectra of 2,048 channels (Poisson draws of
    PyMca's shipped ``Steel.spe`` at 2 to 50 % of its counts) with PyMca's
    ``Steel.cfg`` (its strip continuum swapped for SNIP, which
    ``FastXRFLinearFit`` needs; per-spectrum Poisson weights, as the file asks),
    negative areas refitted as PyMca does, by

    - PyMca: ``FastXRFLinearFit().fitMultipleSpectra(y=spectra, configuration=cfg, refit=1)``;
    - lightpipe: ``XrfModel(cfg, 2048).fit(spectra, negative="pymca")`` (one block).

    Building the model is timed apart on both sides (PyMca builds it inside
    its call: its figure includes it, and the build time is printed for ours).
    The maps must agree: the largest relative difference of the areas above
    3 sigma is printed (target <= 1e-3). Also, for information, the
    ``xrf_fit`` stage one spectrum at a time (what a pipeline does per point).

Run ``python benchmarks/xrf.py`` (``--quick`` for 500 spectra, ``--json`` for
the figures as JSON on the last line of stdout).
"""
from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import sys
import time

import numpy as np

TARGET = 1.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spectra", type=int, default=10_000)
    parser.add_argument("--quick", action="store_true", help="500 spectra")
    parser.add_argument("--json", action="store_true", help="figures as JSON on the last line of stdout")
    args = parser.parse_args()
    n = 500 if args.quick else args.spectra
    logging.disable(logging.WARNING)  # PyMca logs every area it forces to zero
    import PyMca5
    from PyMca5 import PyMcaDataDir
    from PyMca5.PyMcaIO import ConfigDict, specfilewrapper
    from PyMca5.PyMcaPhysics.xrf import FastXRFLinearFit

    from lightpipe.core.event import Scan
    from lightpipe.techniques.xrf.config import from_dict
    from lightpipe.techniques.xrf.linear_fit import XrfModel
    from lightpipe.techniques.xrf.stages import XrfFit

    config = ConfigDict.ConfigDict()
    config.read(os.path.join(PyMcaDataDir.PYMCA_DATA_DIR, "Steel.cfg"))
    config["fit"]["stripalgorithm"] = 1
    steel = np.asarray(specfilewrapper.Specfile(os.path.join(PyMcaDataDir.PYMCA_DATA_DIR, "Steel.spe"))[0].mca(1))
    rng = np.random.default_rng(0)
    spectra = rng.poisson(steel * rng.uniform(0.02, 0.5, (n, 1))).astype(np.float64)

    t = time.perf_counter()
    out = FastXRFLinearFit.FastXRFLinearFit().fitMultipleSpectra(y=spectra, configuration=copy.deepcopy(config),
                                                                refit=1, save=False)
    pymca_s = time.perf_counter() - t
    reference, sigmas = np.asarray(out["parameters"]).T, np.asarray(out["uncertainties"]).T

    t = time.perf_counter()
    model = XrfModel(from_dict(config), spectra.shape[1])
    build_s = time.perf_counter() - t
    t = time.perf_counter()
    result = model.fit(spectra, negative="pymca")
    ours_s = time.perf_counter() - t
    strong = reference > 3 * sigmas
    difference = float(np.max(np.abs(result.areas - reference)[strong] / np.abs(reference)[strong]))

    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "steel.cfg")
        config.write(path)
        stage = XrfFit(XrfFit.Params(config=path))
        stage.setup(Scan(name="bench", streams={"data": range(n)}, metadata={}))
        stage.process(spectrum=spectra[0])  # builds the model
        some = spectra[: min(n, 2000)]
        t = time.perf_counter()
        for spectrum in some:
            stage.process(spectrum=spectrum)
        stage_rate = len(some) / (time.perf_counter() - t)

    figures = {
        "spectra": n, "channels": int(spectra.shape[1]), "pymca_version": PyMca5.version(),
        "pymca_spectra_per_s": n / pymca_s, "lightpipe_spectra_per_s": n / ours_s,
        "lightpipe_build_s": build_s, "ratio": pymca_s / ours_s, "target": TARGET,
        "max_relative_difference_above_3_sigma": difference,
        "stage_spectra_per_s_one_at_a_time": stage_rate, "load_average": os.getloadavg()[0],
    }
    table = "\n".join(f"{k:40s} {v:.4g}" if isinstance(v, float) else f"{k:40s} {v}" for k, v in figures.items())
    print(table, file=sys.stderr if args.json else sys.stdout)
    if args.json:
        print(json.dumps(figures))


if __name__ == "__main__":
    main()
