def count(seed, samples):
    return 0
