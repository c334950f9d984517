"""Stage 5, what a finished run gives a paper: law records, exports, figures and reports."""
