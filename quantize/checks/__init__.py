"""The check stage: eval sets, scoring (ppl, KLD), smoke chat, gates, and the checker that records them."""
