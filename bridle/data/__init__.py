"""The data the project makes or fetches for training, tests and benchmarks, none of it shipped:

- demo_data: the demo sets (`python -m bridle.data.demo_data`): spoken digits, digit images, moving digits;
- printed_digits: digits printed in the system's fonts (part of image-digits);
- fsdd: the real spoken digits of the Free Spoken Digit Dataset (CC BY-SA 4.0);
- media_files: small media files in every format the service takes, valid and damaged (tests, fuzzing);
- reference_beats, beats_files: upstream BEATs' forward pass and small checkpoints in its file layout
  (the importer's tests and bench.beats).
"""

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")  # labels
