"""Synthetic worlds with known truth, for tests, the demo and benchmarks: never used by the product's jobs.

    clickstream  users, sessions and transactions with planted fraud (the behaviour-clustering world)
    generate     writes a click-stream world into a lake (`lakelens generate`)
    week         a drifting week for daily runs (`lakelens generate-week`): an app release renames events,
                 a sale shifts habits, a timing bot copies quick buyers, a new unlabelled fraud pattern appears
    truth        scores published results against the world's planted truth (`lakelens evaluate`)
    images       32x32 images with known concepts and a spurious corner marker (the semantic-lens world)
    lens_world   writes the image world and trains its tiny models (`lakelens generate-images`)
    training     the minibatch loop of those tiny models (the classifier and the tiny CLIP)
"""
