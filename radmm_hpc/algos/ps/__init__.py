"""The asynchronous methods with a parameter server (rank 0) and workers (ranks 1..W):
protocol.py (the deadlock-free message protocol), asgd.py (A-SGD), dap.py with dap_math.py
(DAP-SVRG and DAP-SGD)."""
