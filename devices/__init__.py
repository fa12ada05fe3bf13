"""Device-side code: the simulator that stands in for implants and vehicles."""
