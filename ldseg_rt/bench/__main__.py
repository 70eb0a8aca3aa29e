"""`python -m ldseg_rt.bench`: the same as `python -m ldseg_rt bench`."""
from .harness import main

if __name__ == "__main__":
    main()
