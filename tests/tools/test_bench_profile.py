"""`make bench`'s profile summary reads py-spy's collapsed stacks, which py-spy sometimes writes
torn (a frame's name read while it changed): one such line once stopped a bench run's profile."""

from bench.run import summarize_profile


def test_a_torn_stack_is_skipped_and_the_rest_summed() -> None:
    good = "<module> (streams/worker.py:1);apply (streams/core/journeys/journey.py:10) 7"
    idle = "<module> (streams/worker.py:1);select (selectors.py:468) 3"
    # \x1c is a line break to str.splitlines; the torn stack ends in " (" where a count belongs
    torn = "<module> (streams/worker.py:1);ap\x1c\x02 ("
    summary = summarize_profile("\n".join([good, torn, idle, ""]))
    assert summary["samples"] == 10
    assert summary["busy_percent"] == 70.0
    assert summary["inclusive_percent_ours"]["apply"] == 70.0
