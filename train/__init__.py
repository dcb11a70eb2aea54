"""The trainer: `python -m train.run --stage=STAGE`. One engine (engine.py) runs every stage (stages/)."""
