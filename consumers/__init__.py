"""Task workers: ``worker run --group NAME`` joins a consumer group and runs its pipeline."""
