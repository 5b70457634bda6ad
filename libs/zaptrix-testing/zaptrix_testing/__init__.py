"""The Zaptrix test kit, shared by the services' tests, tests/, dev/localsystem.py and bench/.

Nothing here imports pytest: dev/localsystem.py (`make run`) seeds the sandbox through `seeding`.
"""
