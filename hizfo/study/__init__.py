"""The CPU-scale study of the paper's claims (`make mini`): arms, statistics, verdicts, rendering."""
