"""Shared by the benchmarks: percentiles and summaries, machine facts, table cells, result JSON, py-spy."""
