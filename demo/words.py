"""A small hand-written list of common English words, the real-word part of the demo's data.

Every ``HELDOUT_EVERY``-th word is reserved for the held-out set: training never sees it, neither
alone nor inside a phrase (see ``loraplex.demo.tasks``).
"""

from __future__ import annotations

HELDOUT_EVERY = 6

WORDS: tuple[str, ...] = tuple(
    """
    about above across act add after again age ago air all almost alone along already also always
    among amount angle animal answer any apple area arm army around art ask away baby back bad bag
    ball band bank bar base basket bath beach bear beat bed bee before begin bell below best better
    between big bird birth bit bite black blade blood blow blue board boat body bone book border
    bottle bottom box boy brain branch bread break breath brick bridge bright bring brother brown
    brush bucket build burn butter button cake call camera camp can candle cap car card care carpet
    carry case cat cause chain chair chalk chance change cheap cheese chest chicken child chin church
    circle city clean clear clock close cloth cloud coat cold color comb come common copper corn
    cotton cough country cover cow crack cream cross crowd crown cup curtain cushion cut damage
    dance danger dark daughter day dead dear deep desert desk detail dinner direction dirty dog
    door double down drain drawer dream dress drink drive drop dry dust ear early earth east edge
    egg eight end engine enough even evening event every eye face fact fall family farm fast father
    feather feeling field fight finger fire first fish five flag flame floor flower fly fold food
    foot forest fork form four frame free friend front fruit full future game garden gate gift girl
    glass glove goat gold good grain grass great green grey ground group grow guide hair hammer hand
    happy harbor hat head health heart heat heavy help high hill history hole home hook hope horn
    horse hospital hour house humor ice idea inch ink insect iron island jelly jewel journey judge
    juice jump kettle key kind king kiss kitchen knee knife knot lamp land language last late laugh
    lead leaf learn leather left leg lemon letter level library light line lion lip list little
    live lock long loud love low lunch machine magic map market match meal meat medal memory metal
    middle milk mind minute mirror money monkey month moon morning mother mountain mouse mouth music
    nail name narrow nation near neck needle nest net news night nine noise north nose note number
    nut ocean office oil old one onion open orange order oven owner page pain paint paper parcel
    park party paste pearl pen pencil people pepper piano picture pig pin pipe place plane plant
    plate play plum pocket point poison potato powder power price print prison pump purple push
    queen question quick quiet rabbit rain rat ray reading red rice right ring river road rock roof
    room root rope rose round rule run sail salt sand school science scissors screw sea seat second
    seed seven shade shadow sheep shelf shell ship shirt shoe short silver simple sister six size
    skin skirt sky sleep slope small smile smoke snake snow soap sock soft song sound soup south
    space spade spoon spring square stage stamp star station steam steel stem stick stone storm
    story street string sugar summer sun sweet table tail talk taste tea teacher ten theory thick
    thin thread three thumb thunder ticket tiger time tired toe tomorrow tongue tooth top town toy
    train tree trick trouble truck turn twist two umbrella uncle under valley value verse vessel
    view village voice wall warm wash watch water wave wax way weather week weight west wheel whip
    whistle white wind window wine wing winter wire wise woman wood wool word work worm wound year
    yellow young zebra zero
    """.split()
)

TRAIN_WORDS: tuple[str, ...] = tuple(w for i, w in enumerate(WORDS) if i % HELDOUT_EVERY != 0)
HELDOUT_WORDS: tuple[str, ...] = tuple(w for i, w in enumerate(WORDS) if i % HELDOUT_EVERY == 0)
