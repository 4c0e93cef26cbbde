"""The ``ssmzoo`` subcommands and their one-line help: read by the light entry point and by the LightningCLI app
(a module of its own, so that neither imports the other)."""

# name -> one line of help; `ssmzoo SUBCOMMAND --help` shows the subcommand's own arguments
# (tests/test_cli_user.py checks that this list is the LightningCLI's, plus generate and data).
SUBCOMMANDS = {
    "fit": "Train from a config (ssmzoo fit --config configs/lra/listops/s4d_small.yaml), then test the best "
           "checkpoint and write results.json into the run folder.",
    "validate": "Evaluate a checkpoint (--ckpt_path) on the validation split.",
    "test": "Evaluate a checkpoint (--ckpt_path) on the test split and write results.json.",
    "predict": "Write a checkpoint's predictions to a file in a new run folder: class probabilities, forecasts "
               "with timestamps, or continuations of --predictions.prompts for language models.",
    "generate": "Continue a prompt with a trained language model (--ckpt_path, --prompt), streaming the text.",
    "data": "Write or locate ssmzoo's data sets (ssmzoo data --help).",
}
