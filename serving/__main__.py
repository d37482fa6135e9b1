"""`python -m serving`: run the API with uvicorn (see serving.app.main)."""
import sys

from serving.app import main

sys.exit(main())
