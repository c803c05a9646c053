"""The smoke test's reward (configs/smoke.yaml): a response is "correct" when it has an even number
of characters. A tiny random model never solves arithmetic, so with math-verify every group would be
all wrong and dropped; this toy rule gives each group a mix of right and wrong answers, so the smoke
test runs a real policy update. Not a benchmark of anything."""


def parity(responses, answers):
    return [1.0 if len(r) % 2 == 0 else 0.0 for r in responses]
