"""App1 of the seed: loads the model and answers one request."""
import hashlib
import os

import numpy as np

MODEL = "/models/dust.model"


def main():
    with open("/etc/app/app.conf") as f:
        conf = dict(line.strip().split("=", 1) for line in f if "=" in line)
    h = hashlib.sha256()
    with open(MODEL, "rb") as f:
        h.update(f.read(1 << 20))
    print(f"app1: {conf.get('name')} model {os.path.getsize(MODEL)} bytes, head {h.hexdigest()[:12]}, "
          f"numpy {np.__version__}, mean {np.arange(1 * 10).mean()}")


if __name__ == "__main__":
    main()
